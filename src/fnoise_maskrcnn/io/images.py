"""The one image reader of the package: training, validation, evaluation, predict, serve and visualize.

:func:`read_image` opens a file or encoded bytes, checks the size from the header (before any pixel is
decoded), decodes, applies the EXIF orientation and converts every mode PIL opens to 8-bit RGB
(:func:`to_rgb`), so a photo stored sideways is upright everywhere and a 16-bit image keeps its contrast
everywhere. :func:`read_image_tensor` gives the same picture as the ``float32 [3, H, W]`` tensor in
``[0, 1]`` that torchvision's detection models take. Every failure is an :class:`ImageError` with a
one-line message that names the image.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as F

__all__ = [
    "ImageError",
    "ImageTooLargeError",
    "ImageSource",
    "to_rgb",
    "open_image",
    "read_image",
    "read_image_tensor",
    "to_tensor",
]

#: A file path, or the encoded bytes of an image file.
ImageSource = str | os.PathLike | bytes

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_EXIF_ORIENTATION = 0x0112


class ImageError(ValueError):
    """An input is not a readable image, or is too large (one-line message naming the image)."""


class ImageTooLargeError(ImageError):
    """An image has more pixels than allowed."""


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
    """The upright RGB version of ``image``: EXIF orientation applied, high bit depths scaled to 8 bits.

    Returns ``image`` itself (decoded) when it is already upright RGB, so a large image is not copied.
    """
    image.load()
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in (*_SIXTEEN_BIT_MODES, "I", "F"):
        image = _to_8bit(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _display_name(source: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    return "image" if isinstance(source, (bytes, bytearray)) else str(source)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_image(source: ImageSource, *, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """Opens an image and checks its size from the header, before decoding any pixel.

    Args:
        source: a file path, or the encoded bytes of an image file.
        name: how messages name the image (default: the path, or ``"image"`` for bytes).
        max_pixels: refuse images with ``width * height > max_pixels``; ``None``: no limit of ours
            (PIL's decompression-bomb limit still applies).

    Returns:
        The lazily opened PIL image (nothing decoded yet).

    Raises:
        ImageTooLargeError: over ``max_pixels`` or over PIL's decompression-bomb limit.
        ImageError: the file is missing, a folder, unreadable, or not an image PIL can read.
    """
    label = _display_name(source, name)
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        path = Path(source)
        if path.is_dir():
            raise ImageError(f"{label}: is a folder, expected an image file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{label}: no such file") from None
        except OSError as exc:
            raise ImageError(f"{label}: cannot be read ({exc.strerror or _first_line(exc)})") from None
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageTooLargeError(
            f"{label}: image is over PIL's decompression-bomb limit of {2 * Image.MAX_IMAGE_PIXELS} pixels"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: not a readable image ({exc.__class__.__name__})") from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label}: image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    return image


def read_image(source: ImageSource, *, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """Reads an image as the upright 8-bit RGB picture every job sees (see :func:`to_rgb`).

    Args: as :func:`open_image`.

    Returns:
        A decoded PIL image in mode ``"RGB"``, ``W x H`` after EXIF orientation.

    Raises:
        ImageError: see :func:`open_image`; also a truncated or corrupt file (one line naming it).
    """
    image = open_image(source, name=name, max_pixels=max_pixels)
    try:
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises all three for corrupt files
        raise ImageError(
            f"{_display_name(source, name)}: image cannot be decoded ({_first_line(exc)})"
        ) from None


def to_tensor(image: Image.Image, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An RGB PIL image as a ``[3, H, W]`` tensor: ``float32`` in ``[0, 1]`` or ``uint8`` in ``0..255``."""
    pixels = F.pil_to_tensor(image)
    return pixels if dtype == torch.uint8 else F.to_dtype(pixels, dtype, scale=True)


def read_image_tensor(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """:func:`read_image` as a tensor: ``[3, H, W]`` (``H x W`` after EXIF orientation), ``float32`` in
    ``[0, 1]`` (the input of torchvision's detection models) or ``uint8`` (a quarter of the memory)."""
    return to_tensor(read_image(source, name=name, max_pixels=max_pixels), dtype)
