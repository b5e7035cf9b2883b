"""What predict, evaluate and serve share: running a model, drawing, JSON (the device: :mod:`.device`).

Images are read by :mod:`fnoise_maskrcnn.io.images` (the reader the dataset uses, so predictions and
evaluation see the same pixels) as ``[3, H, W]`` tensors, ``float32`` in ``[0, 1]`` or ``uint8``.
:func:`predict_batch` gives exactly the model's detections with less memory on large images: images are
normalised and resized one at a time (one float copy of a full-size image, freed once resized), only the
detections above the score threshold get a mask, and masks are pasted one at a time as ``bool``; memory
grows with the kept detections, not with the model's 100 per image. :func:`draw_overlay` blends masks a
band of rows at a time.
"""

from __future__ import annotations

import colorsys
import io
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection import transform as detection_transform
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes

from .evaluation.coco import MASK_THRESHOLD, encode_masks
from .io.images import ImageError, ImageTooLargeError
from .precision import detection_autocast

__all__ = [
    "ImageError",
    "ImageTooLargeError",
    "MASK_THRESHOLD",
    "DEFAULT_MAX_PIXELS",
    "filter_by_score",
    "predict_batch",
    "draw_overlay",
    "instances_to_json",
    "png_bytes",
    "category_names",
]

Output = dict[str, torch.Tensor]

_MASK_ALPHA = 0.45
#: Pixels per band when drawing masks (bounds the float temporaries of a large image).
_BAND_PIXELS = 1 << 22

#: predict's and evaluate's default ``--max-pixels``: 64 megapixels, an 8000 x 8000 image.
DEFAULT_MAX_PIXELS = 8000 * 8000


def filter_by_score(output: Mapping[str, torch.Tensor], score_thresh: float) -> Output:
    """Keeps the detections with ``score >= score_thresh`` (every entry indexed along dim 0)."""
    keep = output["scores"] >= score_thresh
    if bool(keep.all()):  # the usual case (the model already applied the threshold): no copy of the masks
        return dict(output)
    return {key: value[keep] for key, value in output.items()}


def _paste_binary_masks(masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pastes ``[N, 1, M, M]`` mask-head probabilities into ``size`` one mask at a time, binarised at
    :data:`MASK_THRESHOLD`.

    Each mask is pasted with torchvision's own ``paste_masks_in_image`` (the same pixels as the model's
    postprocessing), but only one full-size float mask exists at a time, and the result is ``bool``:
    ``N * H * W`` bytes instead of torchvision's ``2 * 4 * N * H * W`` (float masks, listed then stacked).

    Returns:
        ``bool [N, 1, H, W]``.
    """
    height, width = size
    out = torch.zeros((masks.shape[0], 1, height, width), dtype=torch.bool, device=masks.device)
    for i in range(masks.shape[0]):
        pasted = detection_transform.paste_masks_in_image(masks[i : i + 1], boxes[i : i + 1], size)
        out[i] = pasted[0] >= MASK_THRESHOLD
    return out


def _normalized(transform: GeneralizedRCNNTransform, image: torch.Tensor) -> torch.Tensor:
    """``transform.normalize(image)`` with one new full-size tensor instead of two: a ``uint8`` image is
    converted as ``to_dtype(scale=True)`` converts it, then normalised in place (the same arithmetic, so
    the same values); the caller's tensor is never modified."""
    dtype = image.dtype if image.is_floating_point() else torch.float32
    mean = torch.as_tensor(transform.image_mean, dtype=dtype, device=image.device)[:, None, None]
    std = torch.as_tensor(transform.image_std, dtype=dtype, device=image.device)[:, None, None]
    if image.is_floating_point():
        normalized = image - mean
    else:
        normalized = F.to_dtype(image, dtype, scale=True)
        normalized.sub_(mean)
    return normalized.div_(std)


def _transform(model: MaskRCNN, images: list[torch.Tensor]) -> tuple[ImageList, list[tuple[int, int]]]:
    """``model.transform(images)`` in eval mode (torchvision's ``GeneralizedRCNNTransform.forward``), one
    image at a time: a full-size image costs one float copy, freed as soon as it is resized.

    Args:
        images: ``[3, H_i, W_i]``, float in ``[0, 1]`` or ``uint8``; the list is emptied.

    Returns:
        The resized, normalised and padded batch, and the original ``(H_i, W_i)``.
    """
    transform = model.transform
    original_sizes, resized = [], []
    while images:
        image = images.pop(0)
        if image.dim() != 3:
            raise ValueError(f"images must be [C, H, W] tensors, got shape {list(image.shape)}")
        original_sizes.append((int(image.shape[-2]), int(image.shape[-1])))
        image, _ = transform.resize(_normalized(transform, image), None)
        resized.append(image)
    sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in resized]
    padded = transform.batch_images(resized, size_divisible=transform.size_divisible)
    return ImageList(padded, sizes), original_sizes


def _detect(model: MaskRCNN, images: list[torch.Tensor]) -> list[Output]:
    """``model(images)`` in eval mode (torchvision's ``GeneralizedRCNN.forward`` and
    ``GeneralizedRCNNTransform.postprocess``) with less memory: images are prepared one at a time
    (:func:`_transform`, which empties ``images``) and masks are pasted by :func:`_paste_binary_masks`.
    """
    batch, original_sizes = _transform(model, images)
    features = model.backbone(batch.tensors)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    proposals, _ = model.rpn(batch, features)
    detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
    resized_sizes = batch.image_sizes
    del batch, features, proposals
    outputs = []
    for detection, resized, original in zip(detections, resized_sizes, original_sizes):
        output = dict(detection)
        output["boxes"] = detection_transform.resize_boxes(detection["boxes"], resized, original)
        if "masks" in detection:
            output["masks"] = _paste_binary_masks(detection["masks"], output["boxes"], original)
        outputs.append(output)
    return outputs


def _to_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor


@torch.inference_mode()
def predict_batch(
    model: MaskRCNN,
    images: Sequence[torch.Tensor],
    score_thresh: float | None = None,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> list[Output]:
    """Runs the model (in eval mode) on a batch of images of any sizes.

    Args:
        images: ``float32 [3, H_i, W_i]`` in ``[0, 1]``, or ``uint8 [3, H_i, W_i]`` (converted on the
            device, so that a caller can hold images at a quarter of the memory).
        score_thresh: keep detections with ``score >= score_thresh``, also below the model's own
            ``box_score_thresh``; ``None`` keeps the model's threshold. The threshold is applied inside the
            model, before any mask is pasted at full resolution, so dropped detections cost no memory.
        device: where to run (default: the model's device).
        autocast_dtype: run under ``torch.autocast`` in this dtype (``torch.bfloat16`` is what training
            with ``--amp`` evaluates in on a CPU); the outputs are float32 all the same. ``None``: float32.

    Returns:
        One dict per image, on the CPU: ``boxes`` float32 ``[N, 4]`` XYXY in the image's pixels,
        ``labels`` int64 ``[N]`` in ``1..K``, ``scores`` float32 ``[N]`` (descending),
        ``masks`` bool ``[N, 1, H_i, W_i]``: the model's soft masks binarised at :data:`MASK_THRESHOLD`
        (as every consumer here does: overlays, COCO RLE, evaluation).
    """
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model_thresh = model.roi_heads.score_thresh
    if score_thresh is not None:
        # torchvision keeps scores strictly above its threshold; the margin keeps scores equal to ours,
        # and filter_by_score below applies the exact ">=".
        model.roi_heads.score_thresh = score_thresh - 1e-6
    try:
        model.eval()
        with detection_autocast(model, device.type, autocast_dtype):
            outputs = _detect(model, [image.to(device, non_blocking=True) for image in images])
    finally:
        model.roi_heads.score_thresh = model_thresh
        model.train(was_training)
    outputs = [{k: _to_float32(v.cpu()) for k, v in output.items()} for output in outputs]
    if score_thresh is None:
        return outputs
    return [filter_by_score(output, score_thresh) for output in outputs]


def category_names(categories: Sequence[Mapping[str, Any]], labels: torch.Tensor) -> list[str]:
    """Category name of each label (``label i`` is ``categories[i - 1]``)."""
    return [str(categories[int(label) - 1]["name"]) for label in labels]


def draw_overlay(
    image: torch.Tensor, output: Mapping[str, torch.Tensor], categories: Sequence[Mapping[str, Any]]
) -> torch.Tensor:
    """Draws masks, boxes and ``"name score"`` labels on an image with ``torchvision.utils``.

    Args:
        image: ``float32 [3, H, W]`` in ``[0, 1]`` or ``uint8 [3, H, W]``.
        output: detections of this image (see :func:`predict_batch`); masks binary or soft (binarised at
            :data:`MASK_THRESHOLD`).

    Returns:
        ``uint8 [3, H, W]``. Instances of the same category share a colour.
    """
    canvas = image if image.dtype == torch.uint8 else F.to_dtype(image.clamp(0, 1), torch.uint8, scale=True)
    if output["boxes"].numel() == 0:
        return canvas.clone()
    palette = _palette(len(categories))
    colors = [palette[int(label) - 1] for label in output["labels"]]
    if "masks" in output:
        canvas = _draw_masks(canvas, output["masks"][:, 0], colors, alpha=_MASK_ALPHA)
    names = category_names(categories, output["labels"])
    captions = [f"{name} {score:.2f}" for name, score in zip(names, output["scores"].tolist())]
    return draw_bounding_boxes(canvas, output["boxes"], labels=captions, colors=colors, width=2)


def _draw_masks(
    canvas: torch.Tensor, masks: torch.Tensor, colors: Sequence[tuple[int, int, int]], alpha: float
) -> torch.Tensor:
    """Masks drawn as torchvision's ``draw_segmentation_masks`` draws them (``image * (1 - alpha) + colour
    * alpha``, black where masks overlap), a band of rows at a time, so that the float
    temporaries are those of a band, not of the whole image; pixels outside every mask stay exact.

    Args:
        canvas: ``uint8 [3, H, W]``.
        masks: ``[N, H, W]``, bool, or soft (binarised at :data:`MASK_THRESHOLD`).

    Returns:
        A new ``uint8 [3, H, W]``.
    """
    height, width = canvas.shape[-2:]
    palette = torch.tensor(colors, dtype=torch.uint8, device=canvas.device).view(-1, 3, 1)
    out = canvas.clone()
    rows = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        band = slice(top, top + rows)
        original = canvas[:, band]
        painted = original.clone()
        touched = torch.zeros(original.shape[1:], dtype=torch.bool, device=canvas.device)
        overlap = torch.zeros_like(touched)
        for k in range(masks.shape[0]):  # one band of one mask at a time: no [N, rows, W] temporary
            mask = masks[k, band]
            mask = mask if mask.dtype == torch.bool else mask >= MASK_THRESHOLD
            if not bool(mask.any()):
                continue
            painted[:, mask] = palette[k]
            overlap |= touched & mask
            touched |= mask
        if not bool(touched.any()):
            continue
        painted[:, overlap] = 0  # overlaps are drawn dark, as torchvision draws them
        blended = (original * (1 - alpha) + painted * alpha).to(torch.uint8)
        out[:, band] = torch.where(touched, blended, original)
    return out


def _palette(n: int) -> list[tuple]:
    """``n`` distinct, deterministic RGB colours (evenly spaced hues)."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.85, 0.95)) for i in range(n)]


def png_bytes(image: torch.Tensor) -> bytes:
    """PNG encoding of a ``uint8 [3, H, W]`` image."""
    buffer = io.BytesIO()
    F.to_pil_image(image).save(buffer, format="PNG")
    return buffer.getvalue()


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
