"""COCO evaluation of a checkpoint: bbox and segm APs and per-category AP.

Command line::

    python -m fnoise_maskrcnn.evaluate --checkpoint CKPT --ann VAL.json --images DIR [--out metrics.json]

prints the bbox and segm tables (AP, AP50, AP75, APs, APm, APl) and the per-category APs, and writes
them as JSON. The images are read through :class:`fnoise_maskrcnn.data.CocoInstances` (crowd
annotations included in the ground truth). Categories are matched on their original ids:

- a category of the annotation file that the model does not know is evaluated with no
  detections (AP 0, or n/a without instances);
- a category without any instance in the set is reported as n/a (``null`` in the JSON);
- detections of model categories that the annotation file does not have are left out.

Evaluation is :func:`fnoise_maskrcnn.coco_eval.evaluate_coco`, as in training. ``--backend
faster-coco-eval`` makes it use the C++ COCOeval of the ``faster-coco-eval`` package, which gives the
same numbers as pycocotools (checked by the tests and by ``benchmarks/bench_cocoeval.py``).

Images over ``--max-pixels`` are refused before anything runs (their sizes are in the annotation file),
and running out of memory is one line that points to ``--max-pixels`` and ``--batch-size``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .atomic import write_bytes_atomic
from .checkpoint import CheckpointError
from .coco_eval import (
    BACKENDS,
    evaluate_coco,
    format_metrics_table,
    predictions_to_coco_results,
    run_cocoeval,
)
from .data import CocoInstances, DatasetError, collate_fn
from .image_io import ImageError, ImageTooLargeError
from .inference import DEFAULT_MAX_PIXELS, is_out_of_memory, predict_batch, resolve_device
from .model_io import model_from_checkpoint

__all__ = ["BACKENDS", "run_cocoeval", "match_categories", "check_image_sizes", "evaluate_checkpoint", "main"]


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
) -> dict[str, Any]:
    """Predicts on every image of the set and evaluates; returns the metrics dict written as JSON.

    Returns:
        ``{"bbox": {AP...}, "segm": {...}, "per_category": {"bbox": {name: AP or None}, "segm": ...},
        "images", "detections", "categories_without_predictions", "ignored_model_categories",
        "backend", "checkpoint", "ann"}``; APs in ``[0, 1]``.

    Raises:
        CheckpointError, DatasetError, ImageError: one-line messages naming the file.
        MemoryError: out of memory, with a one-line message naming the images of the batch.
    """
    torch_device = resolve_device(device)
    dataset = CocoInstances(image_dir, ann_file, max_images=max_images)
    check_image_sizes(dataset, max_pixels)
    model, ckpt = model_from_checkpoint(checkpoint, device=torch_device)
    _, only_data, only_model = match_categories(ckpt["categories"], dataset.categories, ann_file)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=torch_device.type == "cuda",
    )
    data_ids = {c["id"] for c in dataset.categories}
    results: list[dict[str, Any]] = []
    for images, targets in loader:
        image_ids = [int(t["image_id"]) for t in targets]
        try:
            outputs = predict_batch(model, list(images), device=torch_device)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            hint = "--max-pixels" + (" or --batch-size 1" if len(image_ids) > 1 else "")
            raise MemoryError(
                f"{_file_names(dataset, image_ids)}: out of memory while predicting; try a smaller {hint}"
            ) from None
        entries = predictions_to_coco_results(outputs, image_ids, ckpt["categories"])
        results.extend(e for e in entries if e["category_id"] in data_ids)
        del images, outputs

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
        }
    )
    return metrics


def _one_line(exc: BaseException) -> str:
    """``exc``'s message on one line. An error raised in a DataLoader worker arrives with the worker's
    traceback in its message; its last line is the original message."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and "Original Traceback" in str(exc):
        last = lines[-1]
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        return last.removeprefix(prefix).removeprefix(f"{type(exc).__name__}: ")
    return lines[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fnoise_maskrcnn.evaluate",
        description="COCO bbox and segm AP of a checkpoint on a COCO-format set (printed, and as JSON).",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by training")
    parser.add_argument("--ann", required=True, type=Path, help="COCO instances JSON of the evaluation set")
    parser.add_argument(
        "--images", required=True, type=Path, help="folder the annotation file's file_name are in"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="metrics JSON (default: <checkpoint stem>-<ann stem>-metrics.json next to the checkpoint)",
    )
    parser.add_argument("--batch-size", type=int, default=2, help="images per forward pass (default 2)")
    parser.add_argument("--workers", type=int, default=0, help="data loading processes (default 0)")
    parser.add_argument("--max-images", type=int, help="evaluate the first N images only (by image id)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse a set with an image over this many pixels, width*height (default {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument("--device", default="auto", help="'auto' (GPU when there is one), 'cpu', 'cuda' ...")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="pycocotools", help="COCOeval implementation (same numbers)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for flag, value, minimum in (
        ("--batch-size", args.batch_size, 1),
        ("--workers", args.workers, 0),
        ("--max-images", args.max_images, 1),
        ("--max-pixels", args.max_pixels, 1),
    ):
        if value is not None and value < minimum:
            parser.error(f"{flag} must be >= {minimum}, got {value}")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")
    if args.backend == "faster-coco-eval":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            parser.error("--backend faster-coco-eval needs the package: pip install 'fnoise-maskrcnn[eval]'")
    out = args.out or args.checkpoint.with_name(f"{args.checkpoint.stem}-{args.ann.stem}-metrics.json")
    try:
        metrics = evaluate_checkpoint(
            args.checkpoint,
            args.ann,
            args.images,
            batch_size=args.batch_size,
            device=device,
            workers=args.workers,
            max_images=args.max_images,
            max_pixels=args.max_pixels,
            backend=args.backend,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic((json.dumps(metrics, indent=2) + "\n").encode(), out)
    except (CheckpointError, DatasetError, ImageError, ValueError, OSError, MemoryError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"{metrics['images']} images, {metrics['detections']} detections, COCO AP ({args.backend}):")
    print(format_metrics_table(metrics))
    if metrics["categories_without_predictions"]:
        print(
            f"categories the model does not predict: {', '.join(metrics['categories_without_predictions'])}"
        )
    print(f"metrics written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
