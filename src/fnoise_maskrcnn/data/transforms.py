"""Detection transforms on ``torchvision.transforms.v2`` (boxes and masks follow the image).

Resizing is left to the model (``MaskRCNN(min_size=..., max_size=...)``, whose ``min_size`` may be a
tuple for multi-scale training), so these transforms never resize to a fixed or square size.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

#: ImageNet mean in uint8, the fill of zoomed-out borders (what the model normalises to zero).
_MEAN_FILL = (124, 116, 104)


def build_transforms(train: bool, *, scale_jitter: bool = False, photometric: bool = False) -> v2.Compose:
    """Transforms taking ``(PIL image, target)`` to ``(float32 [3, H, W] in [0, 1], target)``.

    Args:
        train: add a random horizontal flip (p=0.5) and the options below; eval only converts.
        scale_jitter: with p=0.5, zoom out (SSD-style ``RandomZoomOut``): the image is placed on a
            mean-filled canvas 1-2x its size. The model then resizes the canvas to ``min_size``, so
            objects appear at 0.5-1x their usual scale; boxes and masks follow.
        photometric: ``RandomPhotometricDistort`` (brightness, contrast, saturation, hue, channel
            order), each with p=0.5.
    """
    ops: list = [v2.ToImage()]
    if train:
        ops.append(v2.RandomHorizontalFlip(p=0.5))
        if scale_jitter:
            ops.append(
                v2.RandomZoomOut(
                    fill={tv_tensors.Image: _MEAN_FILL, "others": 0}, side_range=(1.0, 2.0), p=0.5
                )
            )
        if photometric:
            ops.append(v2.RandomPhotometricDistort(p=0.5))
    ops.append(v2.ToDtype(torch.float32, scale=True))  # images only; masks stay uint8, boxes float32
    return v2.Compose(ops)
