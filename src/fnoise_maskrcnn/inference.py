"""What predict, evaluate, export and serve share: image decoding, running a model, drawing, JSON.

Images are decoded with PIL (the decoder ``CocoInstances`` uses, so predictions and evaluation see
the same pixels) and converted to ``float32 [3, H, W]`` in ``[0, 1]``, the input of torchvision's
detection models.
"""

import colorsys
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from torchvision.models.detection import MaskRCNN
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from .image_io import to_rgb

__all__ = [
    "ImageError",
    "ImageTooLargeError",
    "resolve_device",
    "open_image",
    "read_image",
    "decode_image",
    "filter_by_score",
    "predict_batch",
    "draw_overlay",
    "encode_masks",
    "instances_to_json",
    "png_bytes",
    "category_names",
]

PathLike = str | os.PathLike
Output = dict[str, torch.Tensor]

#: Soft masks are binarised at this value, as in torchvision's references and ``coco_eval``.
MASK_THRESHOLD = 0.5


class ImageError(ValueError):
    """An input is not a decodable image, or is too large (one-line message)."""


class ImageTooLargeError(ImageError):
    """An image has more pixels than allowed."""


def resolve_device(name: str | None) -> torch.device:
    """``None`` or ``"auto"``: the GPU when there is one, else the CPU; otherwise ``torch.device(name)``."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def open_image(data: bytes, max_pixels: int | None = None, source: str = "image") -> Image.Image:
    """Opens encoded image bytes and checks the size from the header, before decoding any pixel.

    Raises:
        ImageTooLargeError: ``width * height > max_pixels`` (or over PIL's decompression-bomb limit).
        ImageError: not an image PIL can read.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{source}: {exc}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"{source}: not a readable image ({exc.__class__.__name__})") from exc
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{source}: image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    return image


def decode_image(data: bytes, max_pixels: int | None = None, source: str = "image") -> torch.Tensor:
    """Decodes image bytes to RGB ``float32 [3, H, W]`` in ``[0, 1]``, upright and 8-bit as in training
    (:func:`fnoise_maskrcnn.image_io.to_rgb`).

    Raises:
        ImageError: see :func:`open_image`; also a truncated or corrupt file.
    """
    image = open_image(data, max_pixels, source)
    try:
        rgb = to_rgb(image)
    except (OSError, ValueError) as exc:
        raise ImageError(f"{source}: image cannot be decoded ({exc})") from exc
    return F.to_dtype(F.pil_to_tensor(rgb), torch.float32, scale=True)


def read_image(path: PathLike, max_pixels: int | None = None) -> torch.Tensor:
    """Reads an image file as :func:`decode_image` does; the error names the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return decode_image(data, max_pixels, source=str(path))


def filter_by_score(output: Mapping[str, torch.Tensor], score_thresh: float) -> Output:
    """Keeps the detections with ``score >= score_thresh`` (every entry indexed along dim 0)."""
    keep = output["scores"] >= score_thresh
    return {key: value[keep] for key, value in output.items()}


@torch.inference_mode()
def predict_batch(
    model: MaskRCNN,
    images: Sequence[torch.Tensor],
    score_thresh: float | None = None,
    device: torch.device | None = None,
) -> list[Output]:
    """Runs the model (in eval mode) on a batch of images of any sizes.

    Args:
        images: ``float32 [3, H_i, W_i]`` in ``[0, 1]``.
        score_thresh: keep detections with ``score >= score_thresh``, also below the model's own
            ``box_score_thresh``; ``None`` keeps the model's threshold. The threshold is applied inside the
            model, before masks are pasted at full resolution, so dropped detections cost no memory.
        device: where to run (default: the model's device).

    Returns:
        One dict per image, on the CPU: ``boxes`` float32 ``[N, 4]`` XYXY in the image's pixels,
        ``labels`` int64 ``[N]`` in ``1..K``, ``scores`` float32 ``[N]`` (descending),
        ``masks`` float32 ``[N, 1, H_i, W_i]`` in ``[0, 1]``.
    """
    if device is None:
        device = next(model.parameters()).device
    model_thresh = model.roi_heads.score_thresh
    if score_thresh is not None:
        # torchvision keeps scores strictly above its threshold; the margin keeps scores equal to ours,
        # and filter_by_score below applies the exact ">=".
        model.roi_heads.score_thresh = score_thresh - 1e-6
    try:
        outputs = model([image.to(device, non_blocking=True) for image in images])
    finally:
        model.roi_heads.score_thresh = model_thresh
    if score_thresh is None:
        return [{k: v.cpu() for k, v in output.items()} for output in outputs]
    return [filter_by_score({k: v.cpu() for k, v in output.items()}, score_thresh) for output in outputs]


def category_names(categories: Sequence[Mapping[str, Any]], labels: torch.Tensor) -> list[str]:
    """Category name of each label (``label i`` is ``categories[i - 1]``)."""
    return [str(categories[int(label) - 1]["name"]) for label in labels]


def draw_overlay(
    image: torch.Tensor, output: Mapping[str, torch.Tensor], categories: Sequence[Mapping[str, Any]]
) -> torch.Tensor:
    """Draws masks, boxes and ``"name score"`` labels on an image with ``torchvision.utils``.

    Args:
        image: ``float32 [3, H, W]`` in ``[0, 1]`` or ``uint8 [3, H, W]``.
        output: detections of this image (see :func:`predict_batch`).

    Returns:
        ``uint8 [3, H, W]``. Instances of the same category share a colour.
    """
    canvas = image if image.dtype == torch.uint8 else F.to_dtype(image.clamp(0, 1), torch.uint8, scale=True)
    if output["boxes"].numel() == 0:
        return canvas.clone()
    palette = _palette(len(categories))
    colors = [palette[int(label) - 1] for label in output["labels"]]
    if "masks" in output:
        masks = output["masks"][:, 0] >= MASK_THRESHOLD
        canvas = draw_segmentation_masks(canvas, masks, alpha=0.45, colors=colors)
    names = category_names(categories, output["labels"])
    captions = [f"{name} {score:.2f}" for name, score in zip(names, output["scores"].tolist())]
    return draw_bounding_boxes(canvas, output["boxes"], labels=captions, colors=colors, width=2)


def _palette(n: int) -> list[tuple]:
    """``n`` distinct, deterministic RGB colours (evenly spaced hues)."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.85, 0.95)) for i in range(n)]


def png_bytes(image: torch.Tensor) -> bytes:
    """PNG encoding of a ``uint8 [3, H, W]`` image."""
    buffer = io.BytesIO()
    F.to_pil_image(image).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """COCO compressed RLE of soft masks ``float32 [N, 1, H, W]`` binarised at 0.5; ``counts`` as ``str``."""
    if masks.shape[0] == 0:
        return []
    binary = (masks[:, 0] >= MASK_THRESHOLD).to(torch.uint8).numpy()
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    return [{"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in rles]


def instances_to_json(
    output: Mapping[str, torch.Tensor], categories: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One JSON-able dict per detection: ``box`` (XYXY pixels), ``label`` (1..K), ``category_id``
    (the original dataset id), ``name``, ``score``, and ``mask`` (COCO RLE) when the output has masks."""
    rles = encode_masks(output["masks"]) if "masks" in output else None
    instances = []
    for k, (box, label, score) in enumerate(
        zip(output["boxes"].tolist(), output["labels"].tolist(), output["scores"].tolist())
    ):
        category = categories[label - 1]
        instance = {
            "box": [round(v, 2) for v in box],
            "label": int(label),
            "category_id": int(category["id"]),
            "name": str(category["name"]),
            "score": round(float(score), 5),
        }
        if rles is not None:
            instance["mask"] = rles[k]
        instances.append(instance)
    return instances
