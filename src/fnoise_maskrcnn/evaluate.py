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

``--backend faster-coco-eval`` uses the C++ COCOeval of the ``faster-coco-eval`` package, which
gives the same numbers as pycocotools (checked by the tests and by ``benchmarks/bench_cocoeval.py``).
"""

import argparse
import contextlib
import copy
import io
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import write_bytes_atomic
from .checkpoint import CheckpointError, model_from_checkpoint
from .coco_eval import STAT_NAMES, evaluate_coco, format_metrics_table, predictions_to_coco_results
from .data import CocoInstances, DatasetError, collate_fn
from .inference import ImageError, predict_batch, resolve_device

__all__ = ["BACKENDS", "run_cocoeval", "match_categories", "evaluate_checkpoint", "main"]

BACKENDS = ("pycocotools", "faster-coco-eval")
IOU_TYPES = ("bbox", "segm")


def run_cocoeval(
    gt_dataset: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    iou_type: str,
    cat_ids: Sequence[int],
    img_ids: Sequence[int],
    backend: str = "pycocotools",
) -> tuple[np.ndarray, np.ndarray]:
    """Runs COCOeval (evaluate, accumulate, summarize) with one backend, silently.

    Args:
        gt_dataset: COCO ground truth as a dict (``images``, ``annotations``, ``categories``).
        results: COCO results entries (not modified); must not be empty.

    Returns:
        ``(stats float64 [12], precision float64 [T, R, K, A, M])`` as COCOeval computes them.
    """
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Evaluator
    elif backend == "faster-coco-eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as Evaluator
    else:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(dict(gt_dataset))
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(list(results)))
        evaluator = Evaluator(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.catIds = list(cat_ids)
        evaluator.params.imgIds = list(img_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats, dtype=np.float64), np.asarray(
        evaluator.eval["precision"], dtype=np.float64
    )


def _metrics_faster(gt_dataset: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The dict of :func:`fnoise_maskrcnn.coco_eval.evaluate_coco`, computed with faster-coco-eval."""
    categories = sorted(gt_dataset["categories"], key=lambda c: c["id"])
    cat_ids = [c["id"] for c in categories]
    img_ids = sorted(img["id"] for img in gt_dataset["images"])
    with_instances = {a["category_id"] for a in gt_dataset["annotations"]}
    metrics: dict[str, Any] = {"per_category": {}, "summary": {}}
    for iou_type in IOU_TYPES:
        entries = [r for r in results if iou_type == "bbox" or "segmentation" in r]
        if not entries:
            metrics[iou_type] = {name: 0.0 for name in STAT_NAMES}
            metrics["per_category"][iou_type] = {
                c["name"]: (0.0 if c["id"] in with_instances else None) for c in categories
            }
            metrics["summary"][iou_type] = "no detections"
            continue
        stats, precision = run_cocoeval(gt_dataset, entries, iou_type, cat_ids, img_ids, "faster-coco-eval")
        metrics[iou_type] = {name: float(stats[i]) for i, name in enumerate(STAT_NAMES)}
        per_category = {}
        for k, category in enumerate(categories):
            values = precision[:, :, k, 0, -1]
            values = values[values > -1]
            per_category[category["name"]] = float(values.mean()) if values.size else None
        metrics["per_category"][iou_type] = per_category
        metrics["summary"][iou_type] = ""
    return metrics


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


def evaluate_checkpoint(
    checkpoint: Path,
    ann_file: Path,
    image_dir: Path,
    *,
    batch_size: int = 2,
    device: str | None = "auto",
    workers: int = 0,
    max_images: int | None = None,
    backend: str = "pycocotools",
) -> dict[str, Any]:
    """Predicts on every image of the set and evaluates; returns the metrics dict written as JSON.

    Returns:
        ``{"bbox": {AP...}, "segm": {...}, "per_category": {"bbox": {name: AP or None}, "segm": ...},
        "images", "detections", "categories_without_predictions", "ignored_model_categories",
        "backend", "checkpoint", "ann"}``; APs in ``[0, 1]``.
    """
    torch_device = resolve_device(device)
    model, ckpt = model_from_checkpoint(checkpoint, device=torch_device)
    dataset = CocoInstances(image_dir, ann_file, max_images=max_images)
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
        outputs = predict_batch(model, list(images), device=torch_device)
        entries = predictions_to_coco_results(outputs, [t["image_id"] for t in targets], ckpt["categories"])
        results.extend(e for e in entries if e["category_id"] in data_ids)

    if backend == "pycocotools":
        metrics = evaluate_coco(dataset.coco, results)
    else:
        metrics = _metrics_faster(dataset.coco.dataset, results)
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


def main(argv: Sequence[str] | None = None) -> int:
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
    parser.add_argument("--device", default="auto", help="'auto' (GPU when there is one), 'cpu', 'cuda' ...")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="pycocotools", help="COCOeval implementation (same numbers)"
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images must be >= 1, got {args.max_images}")
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
            device=args.device,
            workers=args.workers,
            max_images=args.max_images,
            backend=args.backend,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic((json.dumps(metrics, indent=2) + "\n").encode(), out)
    except (CheckpointError, DatasetError, ImageError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{metrics['images']} images, {metrics['detections']} detections, COCO AP in % ({args.backend}):")
    print(format_metrics_table(metrics))
    if metrics["categories_without_predictions"]:
        print(
            f"categories the model does not predict: {', '.join(metrics['categories_without_predictions'])}"
        )
    print(f"metrics written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
