"""Checkpoints: atomic writing, safe loading, and rebuilding a model from a checkpoint alone.

A checkpoint is a plain dict that loads with ``torch.load(path, weights_only=True)``::

    {
        "format": "fnoise_maskrcnn", "version": 1,
        "model": state_dict,              # keys identical to torchvision's MaskRCNN
        "model_config": {...},            # what fnoise_maskrcnn.models.build_model needs
        "categories": [{"id": int, "name": str}, ...],   # label i + 1 <-> categories[i]
        # training checkpoints add: "optimizer", "lr_scheduler", "scaler", "epoch", "iteration",
        # "rng", "args", "best_metric"
    }
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torchvision.models.detection import MaskRCNN

from .atomic import atomic_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_state_dict_file",
    "model_from_checkpoint",
]

CHECKPOINT_FORMAT = "fnoise_maskrcnn"
CHECKPOINT_VERSION = 1

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not of the expected form (one-line message)."""


def save_checkpoint(checkpoint: Mapping[str, Any], path: PathLike) -> None:
    """Writes ``checkpoint`` to ``path`` atomically: a crash leaves the old file or the new one, never half
    of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(dict(checkpoint), f)
        f.flush()
        os.fsync(f.fileno())


def _torch_load(path: PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot be loaded safely (weights_only=True): {reason}") from exc


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """Loads one of our checkpoints (``weights_only=True``) and checks its form.

    Raises:
        CheckpointError: the file is missing, corrupt, or not an fnoise_maskrcnn checkpoint.
    """
    checkpoint = _torch_load(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not an fnoise_maskrcnn checkpoint (no 'format': '{CHECKPOINT_FORMAT}')"
        )
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {checkpoint.get('version')!r} is not supported "
            f"(this package reads version {CHECKPOINT_VERSION})"
        )
    for key in ("model", "model_config", "categories"):
        if key not in checkpoint:
            raise CheckpointError(f"{path}: checkpoint has no '{key}' entry")
    return checkpoint


def load_state_dict_file(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads model weights from a local file.

    Accepts one of our checkpoints, a plain ``state_dict`` (e.g. torchvision's published weights), or
    a dict holding a state_dict under ``"model"`` (torchvision references' checkpoints, as long as they
    load with ``weights_only=True``).

    Returns:
        ``(state_dict, model_config)``; ``model_config`` is empty unless the file is our checkpoint.
    """
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        checkpoint = load_checkpoint(path)
        return checkpoint["model"], dict(checkpoint["model_config"])
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state_dict (expected a dict of tensors)")
    return obj, {}


def model_from_checkpoint(
    checkpoint: PathLike | Mapping[str, Any], device: str | torch.device = "cpu"
) -> tuple[MaskRCNN, dict[str, Any]]:
    """Rebuilds the trained model from a checkpoint alone.

    Args:
        checkpoint: a path to one of our checkpoints, or the loaded dict.
        device: where to put the model.

    Returns:
        ``(model, checkpoint)``: the model in eval mode with the checkpoint's weights loaded strictly,
        and the checkpoint dict (for ``categories``, ``model_config`` ...).
    """
    from .models import build_model

    if not isinstance(checkpoint, Mapping):
        checkpoint = load_checkpoint(checkpoint)
    model = build_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"], strict=True)
    model.to(device).eval()
    return model, dict(checkpoint)
