"""Rebuilding a trained model from a checkpoint alone.

The one module that joins the checkpoint files (:mod:`.checkpoint`, which does not import the model
code) and the model factories (:mod:`fnoise_maskrcnn.models`). predict, evaluate, serve, export and
visualize load their model here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torchvision.models.detection import MaskRCNN

from ..device import resolve_device
from ..models import build_model
from .checkpoint import CheckpointError, load_checkpoint

__all__ = ["model_from_checkpoint"]


def _describe_mismatch(model: MaskRCNN, state: Mapping[str, Any]) -> str:
    """What differs between a model's state_dict and ``state``, in one line."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        k
        for k in expected
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != expected[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        key = shapes[0]
        parts.append(
            f"{len(shapes)} of another shape (e.g. {key}: {list(state[key].shape)} in the file, "
            f"{list(expected[key].shape)} in the model)"
        )
    return "; ".join(parts) or "the weights do not load"


def model_from_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, Any], device: str | torch.device | None = "cpu"
) -> tuple[MaskRCNN, dict[str, Any]]:
    """Rebuilds the trained model from a checkpoint alone.

    Args:
        checkpoint: a path to one of our checkpoints, or the loaded dict.
        device: where to put the model: a device name, a ``torch.device``, or ``"auto"``/``None`` (see
            :func:`fnoise_maskrcnn.device.resolve_device`).

    Returns:
        ``(model, checkpoint)``: the model in eval mode with the checkpoint's weights loaded strictly,
        and the checkpoint dict (for ``categories``, ``model_config`` ...).

    Raises:
        CheckpointError: the file is not a loadable checkpoint (see
            :func:`fnoise_maskrcnn.io.checkpoint.load_checkpoint`), its ``model_config`` cannot be built, or
            its weights do not fit the model it describes (one line naming the file).
    """
    name = str(checkpoint) if not isinstance(checkpoint, Mapping) else "checkpoint"
    if not isinstance(checkpoint, Mapping):
        checkpoint = load_checkpoint(checkpoint)
    if not isinstance(checkpoint["model"], Mapping):
        raise CheckpointError(f"{name}: its 'model' entry is not a state_dict (a dict of tensors)")
    try:
        model = build_model(checkpoint["model_config"])
    except (ValueError, KeyError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{name}: its model_config cannot be built ({reason})") from None
    try:
        model.load_state_dict(checkpoint["model"], strict=True)
    except (RuntimeError, KeyError, TypeError, AttributeError):
        raise CheckpointError(
            f"{name}: the weights do not fit the model its model_config describes: "
            f"{_describe_mismatch(model, checkpoint['model'])}"
        ) from None
    model.to(resolve_device(device)).eval()
    return model, dict(checkpoint)
