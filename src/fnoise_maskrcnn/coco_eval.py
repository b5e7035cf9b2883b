"""COCO evaluation of Mask R-CNN predictions with pycocotools."""

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["STAT_NAMES", "predictions_to_coco_results", "evaluate_coco", "format_metrics_table"]

# The first six COCOeval statistics, in COCOeval.summarize() order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def predictions_to_coco_results(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    categories: Sequence[Mapping[str, Any]],
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """Converts model outputs to COCO results entries.

    Args:
        outputs: one dict per image as returned by Mask R-CNN in eval mode: ``boxes``
            ``FloatTensor[N, 4]`` XYXY in original image pixels, ``scores`` ``FloatTensor[N]``,
            ``labels`` ``Int64Tensor[N]`` in ``1..K``, and optionally ``masks`` ``FloatTensor[N, 1, H, W]``.
        image_ids: the COCO image id of each output.
        categories: ``[{"id": original_id, "name": str}]`` in label order (label ``i + 1`` is
            ``categories[i]``).
        mask_threshold: soft masks are binarised at ``mask >= mask_threshold``.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation": RLE}]``; the
        RLE ``counts`` are ``str`` so the list can be written as JSON.
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"got {len(outputs)} outputs for {len(image_ids)} image ids")
    label_to_category = {i + 1: int(c["id"]) for i, c in enumerate(categories)}
    results: list[dict[str, Any]] = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output["boxes"].detach().float().cpu()
        if boxes.numel() == 0:
            continue
        xywh = boxes.clone()
        xywh[:, 2:] -= xywh[:, :2]
        scores = output["scores"].detach().float().cpu().tolist()
        labels = output["labels"].detach().cpu().tolist()
        rles: list[dict[str, Any]] | None = None
        if "masks" in output:
            binary = (output["masks"].detach()[:, 0] >= mask_threshold).to(torch.uint8).cpu().numpy()
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
            for rle in rles:
                rle["counts"] = rle["counts"].decode("ascii")
        for k, (box, score, label) in enumerate(zip(xywh.tolist(), scores, labels)):
            if label not in label_to_category:
                raise ValueError(f"predicted label {label} has no category (the model has {len(categories)})")
            entry = {
                "image_id": int(image_id),
                "category_id": label_to_category[label],
                "bbox": [round(v, 2) for v in box],
                "score": round(float(score), 5),
            }
            if rles is not None:
                entry["segmentation"] = rles[k]
            results.append(entry)
    return results


def _per_category_ap(evaluator: COCOeval, coco_gt: COCO) -> dict[str, float | None]:
    """AP@[.5:.95] per category (area all, maxDets 100); ``None`` for a category without ground truth."""
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    per_category: dict[str, float | None] = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        name = coco_gt.cats[cat_id]["name"]
        per_category[name] = float(values.mean()) if values.size else None
    return per_category


def evaluate_coco(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    cat_ids: Sequence[int] | None = None,
    img_ids: Sequence[int] | None = None,
    iou_types: Sequence[str] = IOU_TYPES,
) -> dict[str, Any]:
    """Runs COCOeval for each IoU type.

    Args:
        coco_gt: ground truth, crowd annotations included.
        results: COCO results entries (see :func:`predictions_to_coco_results`).
        cat_ids: categories to evaluate (default: all of ``coco_gt``).
        img_ids: images to evaluate (default: all of ``coco_gt``).
        iou_types: any of ``"bbox"``, ``"segm"``.

    Returns:
        ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...},
        "per_category": {"bbox": {name: AP or None}, "segm": {...}}, "summary": {iou_type: text}}``.
        Values are COCOeval's, in ``[0, 1]``; ``-1`` where COCOeval has nothing to average. With no
        results at all, every AP is 0.
    """
    metrics: dict[str, Any] = {"per_category": {}, "summary": {}}
    cat_ids = list(cat_ids) if cat_ids is not None else sorted(coco_gt.getCatIds())
    img_ids = list(img_ids) if img_ids is not None else sorted(coco_gt.getImgIds())
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {', '.join(IOU_TYPES)}; got {iou_type!r}")
        entries = [r for r in results if iou_type == "bbox" or "segmentation" in r]
        if not entries:
            metrics[iou_type] = {name: 0.0 for name in STAT_NAMES}
            metrics["per_category"][iou_type] = {
                coco_gt.cats[c]["name"]: (0.0 if coco_gt.getAnnIds(catIds=[c], imgIds=img_ids) else None)
                for c in cat_ids
            }
            metrics["summary"][iou_type] = "no detections"
            continue
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            coco_dt = coco_gt.loadRes(copy.deepcopy(list(entries)))
            evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            evaluator.params.catIds = cat_ids
            evaluator.params.imgIds = img_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics[iou_type] = {name: float(evaluator.stats[i]) for i, name in enumerate(STAT_NAMES)}
        metrics["per_category"][iou_type] = _per_category_ap(evaluator, coco_gt)
        metrics["summary"][iou_type] = stdout.getvalue().split("DONE", 1)[-1].strip()
    return metrics


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """A plain-text table of the summary APs and the per-category APs, in percent."""

    def pct(value: float | None) -> str:
        return "   n/a" if value is None or value < 0 else f"{100 * value:6.1f}"

    iou_types = [t for t in IOU_TYPES if t in metrics]
    lines = ["metric " + " ".join(f"{t:>6}" for t in iou_types)]
    for name in STAT_NAMES:
        lines.append(f"{name:<6} " + " ".join(pct(metrics[t][name]) for t in iou_types))
    per_category = metrics.get("per_category", {})
    names = sorted({n for t in iou_types for n in per_category.get(t, {})})
    if names:
        width = max(len(n) for n in names)
        lines.append("")
        lines.append(f"{'category':<{width}} " + " ".join(f"{t:>6}" for t in iou_types))
        for n in names:
            lines.append(f"{n:<{width}} " + " ".join(pct(per_category.get(t, {}).get(n)) for t in iou_types))
    return "\n".join(lines)
