"""Reading saved detections for scoring without the model: a COCO ground truth and COCO results files.

``python -m fnoise_maskrcnn.evaluate --results FILE`` writes a COCO results JSON (what ``COCO.loadRes``
reads). Scoring such files again (on subsets of the images, at other detection limits) starts here, so
that a wrong file is one line naming it, before pycocotools asserts or raises a ``KeyError`` deep inside.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from ..data.annotations import DatasetError, load_annotation_file
from ..data.dataset import make_coco

__all__ = ["RESULT_KEYS", "load_coco_results", "load_ground_truth"]

#: The keys every results entry needs; ``segmentation`` (an RLE) is needed for segm AP only.
RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


def load_ground_truth(ann_file: str | os.PathLike) -> COCO:
    """A pycocotools ``COCO`` over a COCO instances JSON, indexed without printing.

    Raises:
        DatasetError: one line naming ``ann_file`` (missing, not JSON, not a COCO instances file).
    """
    data = load_annotation_file(ann_file)
    try:
        return make_coco(data)
    except (KeyError, TypeError) as exc:  # createIndex on entries without their ids
        raise DatasetError(f"{ann_file}: not a COCO instances file (an entry lacks {exc})") from None


def load_coco_results(
    path: str | os.PathLike, image_ids: Collection[int], ground_truth: str = "the ground truth"
) -> list[dict[str, Any]]:
    """The entries of a COCO results JSON, checked against the images they will be scored on.

    Args:
        path: a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` entries,
            with ``"segmentation"`` for segm AP.
        image_ids: the ground truth's image ids; every entry's ``image_id`` must be one of them.
        ground_truth: what to call the ground truth in an error (e.g. its file name).

    Raises:
        ValueError: one line naming ``path`` and the first problem found.
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of COCO results, got a {type(entries).__name__}")
    known = set(image_ids)
    for k, entry in enumerate(entries):
        missing = [key for key in RESULT_KEYS if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise ValueError(f"{path}: entry {k} lacks {', '.join(missing)}")
        if not _is_number(entry["image_id"]) or entry["image_id"] not in known:
            raise ValueError(f"{path}: entry {k}: image id {entry['image_id']!r} is not in {ground_truth}")
        bbox = entry["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise ValueError(f"{path}: entry {k}: bbox must be [x, y, width, height], got {bbox!r}")
        if not _is_number(entry["score"]):
            raise ValueError(f"{path}: entry {k}: score must be a number, got {entry['score']!r}")
    return entries


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
