"""COCO evaluation of Mask R-CNN predictions: the one path used by training, ``evaluate`` and the benchmarks.

:func:`evaluate_coco` runs COCOeval (evaluate, accumulate, summarize) for each IoU type and reads the
summary and per-category APs out of it; :func:`ap_at_max_dets` gives the AP at other per-image detection
limits than COCO's 100. The backend, ``pycocotools`` or ``faster-coco-eval`` (its C++
COCOeval, same numbers), only picks the ``COCO`` and ``COCOeval`` classes (:func:`coco_classes`);
everything else is shared. :func:`encode_masks` is the package's one COCO RLE encoder.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

__all__ = [
    "BACKENDS",
    "IOU_TYPES",
    "MASK_THRESHOLD",
    "STAT_NAMES",
    "coco_classes",
    "encode_masks",
    "predictions_to_coco_results",
    "run_cocoeval",
    "ap_at_max_dets",
    "evaluate_coco",
    "format_metrics_table",
]

#: The first six COCOeval statistics, in COCOeval.summarize() order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")
BACKENDS = ("pycocotools", "faster-coco-eval")
#: Soft masks are binarised at this value, as in torchvision's references.
MASK_THRESHOLD = 0.5


def coco_classes(backend: str = "pycocotools") -> tuple[type, type]:
    """The ``(COCO, COCOeval)`` classes of a backend.

    Raises:
        ValueError: an unknown backend.
        ImportError: faster-coco-eval is asked for but not installed (one-line message).
    """
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if backend == "faster-coco-eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError:
            raise ImportError(
                "the faster-coco-eval backend needs the package: pip install 'fnoise-maskrcnn[eval]'"
            ) from None
        return COCO, COCOeval_faster
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


def encode_masks(masks: torch.Tensor, threshold: float = MASK_THRESHOLD) -> list[dict[str, Any]]:
    """COCO compressed RLE of masks binarised at ``mask >= threshold``, one mask at a time (so that no
    copy of all the masks is made).

    Args:
        masks: ``[N, 1, H, W]`` soft masks (float in ``[0, 1]``) or binary masks (bool / uint8), any device.

    Returns:
        ``N`` dicts ``{"size": [H, W], "counts": str}`` (``counts`` decoded to ``str`` for JSON).
    """
    rles = []
    for mask in masks.detach()[:, 0]:
        binary = mask if mask.dtype == torch.bool else mask >= threshold
        # pycocotools wants Fortran-ordered [H, W, 1] uint8: the transposed C-ordered [W, H], viewed back.
        fortran = binary.t().to("cpu", torch.uint8).contiguous().numpy().T[:, :, None]
        rle = mask_utils.encode(fortran)[0]
        rles.append({"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")})
    return rles


def predictions_to_coco_results(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    categories: Sequence[Mapping[str, Any]],
    mask_threshold: float = MASK_THRESHOLD,
) -> list[dict[str, Any]]:
    """Converts model outputs to COCO results entries.

    Args:
        outputs: one dict per image as returned by Mask R-CNN in eval mode: ``boxes``
            ``FloatTensor[N, 4]`` XYXY in original image pixels, ``scores`` ``FloatTensor[N]``,
            ``labels`` ``Int64Tensor[N]`` in ``1..K``, and optionally ``masks`` ``[N, 1, H, W]`` (soft or
            binary, see :func:`encode_masks`).
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
        rles = encode_masks(output["masks"], mask_threshold) if "masks" in output else None
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


def _ground_truth(coco_gt: Any, backend: str) -> Any:
    """A ``COCO`` object of ``backend`` over ``coco_gt`` (a ``COCO`` of either backend, or a dict).

    A pycocotools ``COCO`` is used as it is for the pycocotools backend; otherwise the ground truth is
    indexed anew from a copy (COCO classes may add fields to the dict they index).
    """
    coco_cls, _ = coco_classes(backend)
    if isinstance(coco_gt, coco_cls):
        return coco_gt
    dataset = coco_gt.dataset if hasattr(coco_gt, "dataset") else coco_gt
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        gt = coco_cls()
        gt.dataset = copy.deepcopy(dict(dataset))
        gt.createIndex()
    return gt


def _check_iou_type(iou_type: str) -> None:
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {', '.join(IOU_TYPES)}; got {iou_type!r}")


def _entries_for(results: Sequence[Mapping[str, Any]], iou_type: str) -> list[Mapping[str, Any]]:
    """The results that ``iou_type`` can score: all for bbox, those with a mask for segm."""
    return [r for r in results if iou_type == "bbox" or "segmentation" in r]


def _mean_precision(values: np.ndarray) -> float | None:
    """Mean of a slice of COCOeval's precision array over its defined cells (-1 marks undefined ones)."""
    values = values[values > -1]
    return float(values.mean()) if values.size else None


def run_cocoeval(
    coco_gt: Any,
    results: Sequence[Mapping[str, Any]],
    iou_type: str,
    cat_ids: Sequence[int],
    img_ids: Sequence[int],
    backend: str = "pycocotools",
) -> tuple[np.ndarray, np.ndarray]:
    """Runs COCOeval (evaluate, accumulate, summarize) with one backend, silently.

    Args:
        coco_gt: the ground truth: a ``COCO`` object (of either backend) or a COCO dict (``images``,
            ``annotations``, ``categories``), crowd annotations included.
        results: COCO results entries (not modified); must not be empty.

    Returns:
        ``(stats float64 [12], precision float64 [T, R, K, A, M])`` as COCOeval computes them; ``K`` follows
        ``cat_ids``.
    """
    stats, precision, _ = _cocoeval(
        _ground_truth(coco_gt, backend), results, iou_type, cat_ids, img_ids, backend
    )
    return stats, precision


def ap_at_max_dets(
    coco_gt: Any,
    results: Sequence[Mapping[str, Any]],
    iou_type: str,
    max_dets: Sequence[int],
    backend: str = "pycocotools",
) -> dict[int, float]:
    """COCO AP (IoU 0.50:0.95, all areas, all categories and images of ``coco_gt``) counting each image's
    ``m`` best-scored detections, for each ``m`` of ``max_dets``.

    One evaluation (IoUs matched once) accumulated at every limit; ``summarize()`` is skipped, since it
    reads fixed limits (it looks for exactly 100). At ``m = 100`` the value is :func:`evaluate_coco`'s AP.

    Returns:
        ``{m: AP}`` in ``[0, 1]``, ascending ``m``; 0 for every ``m`` when no entry is of ``iou_type``.
    """
    _check_iou_type(iou_type)
    limits = sorted({int(m) for m in max_dets})
    if not limits or limits[0] < 1:
        raise ValueError(f"max_dets must be positive integers; got {list(max_dets)}")
    entries = _entries_for(results, iou_type)
    if not entries:
        return dict.fromkeys(limits, 0.0)
    gt = _ground_truth(coco_gt, backend)
    cat_ids = sorted(int(c["id"]) for c in gt.dataset["categories"])
    img_ids = sorted(int(img["id"]) for img in gt.dataset["images"])
    _, precision, _ = _cocoeval(gt, entries, iou_type, cat_ids, img_ids, backend, limits)
    # precision's last axis follows the sorted limits; all IoUs, recalls and categories, area "all"
    return {m: _mean_precision(precision[:, :, :, 0, k]) or 0.0 for k, m in enumerate(limits)}


def _cocoeval(
    gt: Any,
    results: Sequence[Mapping[str, Any]],
    iou_type: str,
    cat_ids: Sequence[int],
    img_ids: Sequence[int],
    backend: str,
    max_dets: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """COCOeval on an indexed ground truth of ``backend``; also returns what summarize() printed.

    With ``max_dets`` (sorted), COCOeval counts those per-image limits instead of 1, 10, 100 and
    summarize() is skipped: the stats come back empty, the summary text ``""``.
    """
    _, evaluator_cls = coco_classes(backend)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        dt = gt.loadRes(copy.deepcopy(list(results)))  # loadRes adds fields to the entries
        evaluator = evaluator_cls(gt, dt, iouType=iou_type)
        evaluator.params.catIds = list(cat_ids)
        evaluator.params.imgIds = list(img_ids)
        if max_dets is not None:
            evaluator.params.maxDets = list(max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
        if max_dets is not None:
            return np.zeros(0), np.asarray(evaluator.eval["precision"], dtype=np.float64), ""
        evaluator.summarize()
    stats = np.asarray(evaluator.stats, dtype=np.float64)
    precision = np.asarray(evaluator.eval["precision"], dtype=np.float64)
    return stats, precision, stdout.getvalue().split("DONE", 1)[-1].strip()


def evaluate_coco(
    coco_gt: Any,
    results: Sequence[Mapping[str, Any]],
    cat_ids: Sequence[int] | None = None,
    img_ids: Sequence[int] | None = None,
    iou_types: Sequence[str] = IOU_TYPES,
    backend: str = "pycocotools",
) -> dict[str, Any]:
    """Runs COCOeval for each IoU type.

    Args:
        coco_gt: ground truth, crowd annotations included: a ``COCO`` object (of either backend) or a COCO
            dict.
        results: COCO results entries (see :func:`predictions_to_coco_results`).
        cat_ids: categories to evaluate (default: all of ``coco_gt``).
        img_ids: images to evaluate (default: all of ``coco_gt``).
        iou_types: any of ``"bbox"``, ``"segm"``.
        backend: ``"pycocotools"`` or ``"faster-coco-eval"``; it only picks the COCO/COCOeval classes.

    Returns:
        ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...},
        "per_category": {"bbox": {name: AP or None}, "segm": {...}}, "summary": {iou_type: text}}``.
        Values are COCOeval's, in ``[0, 1]``; ``-1`` where COCOeval has nothing to average; per-category
        ``None`` for a category without ground truth in the images. With no results at all, every AP is 0.
    """
    for iou_type in iou_types:
        _check_iou_type(iou_type)
    gt = _ground_truth(coco_gt, backend)
    dataset = gt.dataset
    names = {int(c["id"]): str(c["name"]) for c in dataset["categories"]}
    cat_ids = [int(c) for c in cat_ids] if cat_ids is not None else sorted(names)
    img_ids = list(img_ids) if img_ids is not None else sorted(int(img["id"]) for img in dataset["images"])
    wanted = set(img_ids)
    with_instances = {int(a["category_id"]) for a in dataset["annotations"] if a["image_id"] in wanted}
    metrics: dict[str, Any] = {"per_category": {}, "summary": {}}
    for iou_type in iou_types:
        entries = _entries_for(results, iou_type)
        if not entries:
            metrics[iou_type] = {name: 0.0 for name in STAT_NAMES}
            metrics["per_category"][iou_type] = {
                names[c]: (0.0 if c in with_instances else None) for c in cat_ids
            }
            metrics["summary"][iou_type] = "no detections"
            continue
        stats, precision, summary = _cocoeval(gt, entries, iou_type, cat_ids, img_ids, backend)
        metrics[iou_type] = {name: float(stats[i]) for i, name in enumerate(STAT_NAMES)}
        metrics["per_category"][iou_type] = {  # all IoUs and recalls, area "all", maxDets 100
            names[cat_id]: _mean_precision(precision[:, :, k, 0, -1]) for k, cat_id in enumerate(cat_ids)
        }
        metrics["summary"][iou_type] = summary
    return metrics


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """A plain-text table of the summary APs and the per-category APs; values in percent, as the header
    says (the metrics dicts hold fractions in ``[0, 1]``)."""

    def pct(value: float | None) -> str:
        return f"{'n/a':>8}" if value is None or value < 0 else f"{100 * value:8.1f}"

    iou_types = [t for t in IOU_TYPES if t in metrics]
    header = " ".join(f"{t + ' (%)':>8}" for t in iou_types)
    lines = [f"{'metric':<6} {header}"]
    for name in STAT_NAMES:
        lines.append(f"{name:<6} " + " ".join(pct(metrics[t][name]) for t in iou_types))
    per_category = metrics.get("per_category", {})
    names = sorted({n for t in iou_types for n in per_category.get(t, {})})
    if names:
        width = max(len(n) for n in names + ["category"])
        lines.append("")
        lines.append(f"{'category':<{width}} {header}")
        for n in names:
            lines.append(f"{n:<{width}} " + " ".join(pct(per_category.get(t, {}).get(n)) for t in iou_types))
    return "\n".join(lines)
