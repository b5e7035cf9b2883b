"""Mixed precision for torchvision's two-stage detectors: box geometry stays in float32 under autocast.

Under ``torch.autocast``, torchvision's ``GeneralizedRCNN`` carries the autocast dtype into its box
arithmetic: the anchors take the feature maps' dtype, the RPN decodes proposals in the dtype of its head's
outputs, and ``RoIHeads`` casts the ground-truth boxes and the matched ground-truth indices to the
proposals' dtype. bfloat16 has an 8-bit significand, so:

- integers above 256 are not exact: in an image with more than 256 instances, ``project_masks_on_boxes``
  takes some mask targets from a neighbouring instance, and can index one past the last mask;
- coordinates are rounded to 1 px between 128 and 256 and to 2 px between 256 and 512: proposals,
  regression targets and the final boxes of small objects lose precision.

:func:`float32_box_geometry` keeps that arithmetic in float32 while the convolutions and linear layers
still run in the autocast dtype. It adds forward hooks for its duration only, so the model, its
``state_dict`` and TorchScript export stay exactly torchvision's, and in float32 the hooks change nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["float32_box_geometry", "detection_autocast"]


def _as_float32(value: Any) -> Any:
    """``value`` with every floating tensor in it (nested lists and tuples) cast to float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_as_float32(item) for item in value)
    return value


def _float32_outputs(module: nn.Module, args: Any, output: Any) -> Any:
    return _as_float32(output)


def _float32_feature_maps(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    # AnchorGenerator.forward(image_list, feature_maps) builds its anchors in feature_maps[0].dtype
    image_list, feature_maps, *rest = args
    return (image_list, _as_float32(list(feature_maps)), *rest)


@contextlib.contextmanager
def float32_box_geometry(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, ``model``'s anchors, RPN outputs (objectness, box deltas) and box predictor outputs
    (class logits, box deltas) are float32, so proposals, matching, mask-target indices, box losses and
    the final boxes are computed in float32 under autocast.

    Args:
        model: a torchvision ``GeneralizedRCNN`` (Mask R-CNN, Faster R-CNN), or a ``DistributedDataParallel``
            around one; a module without ``rpn``/``roi_heads`` is left alone.
        enabled: ``False`` makes the block a no-op.
    """
    model = getattr(model, "module", model)  # DistributedDataParallel
    handles = []
    if enabled:
        rpn = getattr(model, "rpn", None)
        roi_heads = getattr(model, "roi_heads", None)
        if rpn is not None:
            handles.append(rpn.anchor_generator.register_forward_pre_hook(_float32_feature_maps))
            handles.append(rpn.head.register_forward_hook(_float32_outputs))
        if roi_heads is not None:
            handles.append(roi_heads.box_predictor.register_forward_hook(_float32_outputs))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def detection_autocast(model: nn.Module, device_type: str, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast(device_type, dtype)`` with :func:`float32_box_geometry`; ``dtype=None``: float32,
    no autocast."""
    enabled = dtype is not None
    with torch.autocast(device_type, dtype=dtype, enabled=enabled), float32_box_geometry(model, enabled):
        yield
