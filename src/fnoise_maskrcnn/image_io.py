"""One way to turn a decoded PIL image into the RGB picture every job sees.

Training, validation, evaluation, predict, serve and visualize all go through :func:`to_rgb`, so a photo
with an EXIF orientation is upright everywhere and a 16-bit image keeps its contrast everywhere.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

__all__ = ["to_rgb"]

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float single-channel images as 8-bit ``L``, scaled by their value range.

    PIL's own ``convert("RGB")`` clips such images at 255, which turns a 16-bit microscopy image white.
    ``I;16*`` are scaled from 0..65535; ``I`` from 0..65535 when any value exceeds 255 (16-bit data stored
    as 32-bit), else kept; ``F`` from 0..1 when its values lie in [0, 1], else clipped to 0..255.
    """
    values = np.asarray(image, dtype=np.float64)
    if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and values.size and values.max() > 255):
        values = values / 257.0
    elif image.mode == "F" and values.size and values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """The upright RGB version of ``image``: EXIF orientation applied, high bit depths scaled to 8 bits."""
    image = ImageOps.exif_transpose(image)
    if image.mode in (*_SIXTEEN_BIT_MODES, "I", "F"):
        image = _to_8bit(image)
    return image.convert("RGB")
