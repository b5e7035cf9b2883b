"""COCO evaluation of a checkpoint on a COCO-format set: bbox and segm APs and per-category AP.

The images are read through :class:`fnoise_maskrcnn.data.CocoInstances` (crowd annotations included in
the ground truth). Categories are matched on their original ids:

- a category of the annotation file that the model does not know is evaluated with no
  detections (AP 0, or n/a without instances);
- a category without any instance in the set is reported as n/a (``None``);
- detections of model categories that the annotation file does not have are left out.

Evaluation is :func:`fnoise_maskrcnn.evaluation.coco.evaluate_coco`, as in training; the backend
``faster-coco-eval`` (its C++ COCOeval) gives the same numbers as pycocotools. Images over ``max_pixels``
are refused before anything runs (their sizes are in the annotation file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import CocoInstances, collate_fn
from ..device import is_out_of_memory, resolve_device
from ..engine.state import amp_dtype, amp_precision
from ..inference import DEFAULT_MAX_PIXELS, predict_batch
from ..io.atomic import write_bytes_atomic
from ..io.images import ImageTooLargeError
from ..io.model_io import model_from_checkpoint
from .coco import evaluate_coco, predictions_to_coco_results

__all__ = ["match_categories", "check_image_sizes", "evaluate_checkpoint"]


def match_categories(
    model_categories: Sequence[Mapping[str, Any]],
    data_categories: Sequence[Mapping[str, Any]],
    ann_file: Path,
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Checks that categories with the same id have the same name in the model and the data.

    Returns:
        ``(evaluated model categories, names only in the data, names only in the model)``.

    Raises:
        ValueError: an id names different categories in the checkpoint and in ``ann_file``.
    """
    data_by_id = {int(c["id"]): str(c["name"]) for c in data_categories}
    model_by_id = {int(c["id"]): str(c["name"]) for c in model_categories}
    for cat_id, name in model_by_id.items():
        if cat_id in data_by_id and data_by_id[cat_id] != name:
            raise ValueError(
                f"{ann_file}: category id {cat_id} is {data_by_id[cat_id]!r} but {name!r} in the checkpoint; "
                "the model was trained on different categories"
            )
    shared = [dict(c) for c in model_categories if int(c["id"]) in data_by_id]
    only_data = [name for cat_id, name in data_by_id.items() if cat_id not in model_by_id]
    only_model = [name for cat_id, name in model_by_id.items() if cat_id not in data_by_id]
    return shared, only_data, only_model


def check_image_sizes(dataset: CocoInstances, max_pixels: int | None) -> None:
    """Refuses a set with an image over ``max_pixels``, from the sizes in the annotation file (the dataset
    checks each image against them when it reads it).

    Raises:
        ImageTooLargeError: naming the first such image, its size and the limit.
    """
    if max_pixels is None:
        return
    for image in dataset.coco.dataset["images"]:
        width, height = int(image["width"]), int(image["height"])
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{dataset.image_dir / image['file_name']}: image is {width}x{height} = {width * height} "
                f"pixels, over the limit of {max_pixels} (--max-pixels)"
            )


def _file_names(dataset: CocoInstances, image_ids: Sequence[int]) -> str:
    return ", ".join(str(dataset.image_dir / dataset.coco.imgs[int(i)]["file_name"]) for i in image_ids)


def _coco_results(
    model: nn.Module,
    dataset: CocoInstances,
    categories: Sequence[Mapping[str, Any]],
    device: torch.device,
    batch_size: int,
    workers: int,
    autocast_dtype: torch.dtype | None,
) -> list[dict[str, Any]]:
    """COCO results of ``model`` on every image of ``dataset``, in the set's categories only
    (``autocast_dtype``: see :func:`fnoise_maskrcnn.inference.predict_batch`).

    Raises:
        MemoryError: out of memory, with a one-line message naming the images of the batch.
    """
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
    )
    data_ids = {c["id"] for c in dataset.categories}
    results: list[dict[str, Any]] = []
    for images, targets in loader:
        image_ids = [int(t["image_id"]) for t in targets]
        try:
            outputs = predict_batch(model, list(images), device=device, autocast_dtype=autocast_dtype)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            hint = "--max-pixels" + (" or --batch-size 1" if len(image_ids) > 1 else "")
            raise MemoryError(
                f"{_file_names(dataset, image_ids)}: out of memory while predicting; try a smaller {hint}"
            ) from None
        entries = predictions_to_coco_results(outputs, image_ids, categories)
        results.extend(e for e in entries if e["category_id"] in data_ids)
        del images, outputs
    return results


def evaluate_checkpoint(
    checkpoint: Path,
    ann_file: Path,
    image_dir: Path,
    *,
    batch_size: int = 2,
    device: str | torch.device | None = "auto",
    workers: int = 0,
    max_images: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    backend: str = "pycocotools",
    results_file: Path | None = None,
    amp: bool = False,
) -> dict[str, Any]:
    """Predicts on every image of the set and evaluates; returns the metrics dict ``evaluate`` writes.

    With ``results_file``, the detections are also written there as a COCO results JSON (the list of
    ``{"image_id", "category_id", "bbox", "score", "segmentation"}`` that ``COCO.loadRes`` reads), so
    that they can be scored again on other image subsets without predicting again.

    ``amp`` predicts in the precision training's ``--amp`` resolves to on ``device`` (bfloat16 autocast on
    a CPU with bfloat16 instructions, float16 on CUDA, else float32), which reproduces the validation AP
    that a run trained with ``--amp`` logged; the precision used is ``"precision"`` in the result.

    Returns:
        ``{"bbox": {AP...}, "segm": {...}, "per_category": {"bbox": {name: AP or None}, "segm": ...},
        "images", "detections", "categories_without_predictions", "ignored_model_categories",
        "backend", "precision", "checkpoint", "ann"}``; APs in ``[0, 1]``.

    Raises:
        CheckpointError, DatasetError, ImageError: one-line messages naming the file.
        MemoryError: out of memory, with a one-line message naming the images of the batch.
    """
    torch_device = resolve_device(device)
    dataset = CocoInstances(image_dir, ann_file, max_images=max_images)
    check_image_sizes(dataset, max_pixels)
    model, ckpt = model_from_checkpoint(checkpoint, device=torch_device)
    _, only_data, only_model = match_categories(ckpt["categories"], dataset.categories, ann_file)
    dtype = amp_dtype(torch_device, amp)
    results = _coco_results(model, dataset, ckpt["categories"], torch_device, batch_size, workers, dtype)
    if results_file is not None:
        results_file.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(json.dumps(results).encode(), results_file)
    metrics = evaluate_coco(dataset.coco, results, backend=backend)
    metrics.pop("summary", None)
    metrics.update(
        {
            "checkpoint": str(checkpoint),
            "ann": str(ann_file),
            "images": len(dataset),
            "detections": len(results),
            "categories_without_predictions": only_data,
            "ignored_model_categories": only_model,
            "backend": backend,
            "precision": amp_precision(torch_device, amp),
        }
    )
    return metrics
