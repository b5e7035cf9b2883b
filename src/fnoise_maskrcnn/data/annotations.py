"""Reading and checking a COCO instances JSON before anything is trained on it.

Every problem is found here, up front, and reported as one line that names the file, instead of as a
crash deep inside a DataLoader worker. Problems come in two kinds:

* **errors** make the file unusable as it is (not JSON, a missing ``images`` list, an annotation that
  points at an image or category that does not exist, duplicate ids, ...). ``CocoInstances`` raises
  :class:`DatasetError` on the first kind it meets; ``validate`` lists them all.
* **skips** are single annotations that are left out of the training targets, as torchvision's
  references and detectron2 do: degenerate boxes (zero or negative width/height, or nothing left after
  clipping to the image), polygons with fewer than 3 points, non-crowd annotations without a
  segmentation. They are counted per reason and reported.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """A dataset cannot be used as given. The message is one line naming the file and the problem."""


SKIP_DEGENERATE_BOX = "degenerate box"
SKIP_SHORT_POLYGON = "polygon with fewer than 3 points"
SKIP_NO_SEGMENTATION = "no segmentation"


def load_annotation_file(ann_file: str | os.PathLike) -> dict:
    """Read a COCO JSON file, checking only that it is a JSON object with the three lists COCO needs."""
    path = Path(ann_file)
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, expected a COCO JSON annotation file") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read annotation file ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            found = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise DatasetError(
                f"{path}: '{key}' must be a list, it is {found} (is this a COCO instances file?)"
            )
    return data


class ProblemTally:
    """Counts problems of each kind and remembers the first example of each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        self.first.setdefault(kind, example)

    def lines(self) -> list[str]:
        return [
            f"{n} {kind} (first: {self.first[kind]})" if n > 1 else f"{kind}: {self.first[kind]}"
            for kind, n in self.counts.items()
        ]


@dataclass
class AnnotationCheck:
    """Result of :func:`check_annotations`.

    ``usable`` maps image id -> the non-crowd annotations fit for training (segmentation cleaned of
    too-short polygon parts); ``skipped`` counts the left-out non-crowd annotations by reason.
    """

    ann_file: Path
    errors: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    skip_examples: dict[str, str] = field(default_factory=dict)
    skipped_anns: list[tuple[str, int, int]] = field(default_factory=list)  # (reason, image_id, category_id)

    def skip(self, reason: str, name: str, image_id: int, category_id: int) -> None:
        """Counts one annotation left out of training for ``reason`` (``name`` describes it)."""
        self.skipped[reason] += 1
        self.skip_examples.setdefault(reason, name)
        self.skipped_anns.append((reason, image_id, category_id))

    usable: dict[int, list[dict]] = field(default_factory=dict)
    num_crowd: int = 0

    def raise_if_errors(self) -> None:
        if self.errors:
            more = f" (and {len(self.errors) - 1} more problems; run python -m fnoise_maskrcnn.data.validate)"
            raise DatasetError(f"{self.ann_file}: {self.errors[0]}" + (more if len(self.errors) > 1 else ""))

    def skip_summary(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))


def instance_counts(check: AnnotationCheck, image_ids: Iterable[int] | None = None) -> Counter[int]:
    """Usable training instances (non-crowd, not skipped) per original category id.

    Only the images in ``image_ids`` count (default: all); categories without any are absent.
    """
    ids = check.usable.keys() if image_ids is None else image_ids
    return Counter(ann["category_id"] for image_id in ids for ann in check.usable.get(image_id, ()))


def training_warnings(
    ann_file: str | os.PathLike,
    categories: Sequence[Mapping[str, Any]],
    counts: Mapping[int, int],
    selected: Sequence[str] | None = None,
) -> list[str]:
    """One-line warnings about training data that cannot teach some or all of its categories.

    Args:
        ann_file: the training annotation file (named in every line).
        categories: the categories trained on, ``{"id", "name"}`` (e.g. ``CocoInstances.categories``).
        counts: usable training instances per category id (e.g. from :func:`instance_counts`).
        selected: the category names chosen on the command line (``--categories``), or None.

    Returns:
        No line when every trained category has instances. One line when no category has any; else,
        with ``selected``, one line per selected category without instances. The lines carry no
        ``"warning: "`` prefix: the caller adds it.
    """
    ann_file = Path(ann_file)
    if not any(counts.get(c["id"], 0) for c in categories):
        which = f" of the selected categories ({', '.join(selected)})" if selected else ""
        return [
            f"{ann_file}: no usable training annotations{which}: every image is a negative, "
            "the model cannot learn to detect anything"
        ]
    wanted = set(selected or ())
    return [
        f"{ann_file}: selected category {c['name']!r} (id {c['id']}) has no usable training instances; "
        "the model will not learn it"
        for c in categories
        if c["name"] in wanted and not counts.get(c["id"], 0)
    ]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _clean_segmentation(seg: Any) -> tuple[Any, str | None]:
    """Return (segmentation fit for pycocotools, None) or (None, skip reason / error marker)."""
    if isinstance(seg, list):
        if not all(isinstance(p, list) and all(_is_number(v) for v in p) for p in seg):
            return None, "malformed"
        if any(len(p) % 2 for p in seg):
            return None, "malformed"
        parts = [p for p in seg if len(p) >= 6]
        if not parts:
            return None, SKIP_SHORT_POLYGON if seg else SKIP_NO_SEGMENTATION
        return parts, None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            return None, "malformed"
        if not isinstance(counts, (str, list)) or (
            isinstance(counts, list) and not all(isinstance(v, int) for v in counts)
        ):
            return None, "malformed"
        return seg, None
    if seg is None:
        return None, SKIP_NO_SEGMENTATION
    return None, "malformed"


def check_annotations(data: dict, ann_file: str | os.PathLike) -> AnnotationCheck:
    """Check the structure and content of a loaded COCO instances dict (see the module docstring)."""
    check = AnnotationCheck(ann_file=Path(ann_file))
    errors = ProblemTally()
    known = _Known(_check_images(data["images"], errors), _check_categories(data["categories"], errors))
    for i, ann in enumerate(data["annotations"]):
        _check_annotation(i, ann, known, errors, check)
    check.errors = errors.lines()
    return check


@dataclass
class _Known:
    """What the annotations may refer to, and the annotation ids seen so far."""

    image_sizes: dict[int, tuple[int, int]]  # image id -> (height, width)
    category_ids: set[int]
    ann_ids: set[int] = field(default_factory=set)


def _check_images(images: list, errors: ProblemTally) -> dict[int, tuple[int, int]]:
    """Image id -> (height, width) of the well-formed images; problems go to ``errors``."""
    image_sizes: dict[int, tuple[int, int]] = {}
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int):
            errors.add("images without an integer 'id'", f"images[{i}]")
            continue
        if not isinstance(img.get("file_name"), str):
            errors.add("images without a 'file_name'", f"image id {img['id']}")
        w, h = img.get("width"), img.get("height")
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            errors.add("images without positive integer 'width'/'height'", f"image id {img['id']}")
            continue
        if img["id"] in image_sizes:
            errors.add("duplicate image ids", f"image id {img['id']}")
        image_sizes[img["id"]] = (h, w)
    return image_sizes


def _check_categories(categories: list, errors: ProblemTally) -> set[int]:
    """Ids of the well-formed categories; problems go to ``errors``."""
    category_ids: set[int] = set()
    for i, cat in enumerate(categories):
        if not (
            isinstance(cat, dict) and isinstance(cat.get("id"), int) and isinstance(cat.get("name"), str)
        ):
            errors.add("categories without an integer 'id' and a 'name'", f"categories[{i}]")
            continue
        if cat["id"] in category_ids:
            errors.add("duplicate category ids", f"category id {cat['id']}")
        category_ids.add(cat["id"])
    return category_ids


def _check_annotation(i: int, ann: Any, known: _Known, errors: ProblemTally, check: AnnotationCheck) -> None:
    """Check ``annotations[i]``: an error to ``errors``, or a crowd/skipped/usable entry in ``check``."""
    if not isinstance(ann, dict):
        errors.add("annotations that are not objects", f"annotations[{i}]")
        return
    name = f"annotation id {ann.get('id', f'? (annotations[{i}])')}"
    ann_id = ann.get("id")
    if not isinstance(ann_id, int):
        errors.add("annotations without an integer 'id'", f"annotations[{i}]")
    elif ann_id in known.ann_ids:
        errors.add("duplicate annotation ids", name)
    else:
        known.ann_ids.add(ann_id)
    image_id, category_id = ann.get("image_id"), ann.get("category_id")
    if image_id not in known.image_sizes:
        errors.add("annotations referencing unknown images", f"{name} -> image_id {image_id!r}")
        return
    if category_id not in known.category_ids:
        errors.add("annotations referencing unknown categories", f"{name} -> category_id {category_id!r}")
        return
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        errors.add("annotations without a 'bbox' of 4 numbers", name)
        return
    if ann.get("iscrowd", 0) not in (0, 1):
        errors.add("annotations with 'iscrowd' other than 0 or 1", name)
        return
    if ann.get("iscrowd", 0) == 1:
        check.num_crowd += 1
        return
    height, width = known.image_sizes[image_id]
    x, y, w, h = bbox
    if w <= 0 or h <= 0 or min(x + w, width) <= max(x, 0) or min(y + h, height) <= max(y, 0):
        check.skip(SKIP_DEGENERATE_BOX, name, image_id, category_id)
        return
    segmentation, problem = _clean_segmentation(ann.get("segmentation"))
    if problem == "malformed":
        errors.add("annotations with a malformed 'segmentation'", name)
    elif problem is not None:
        check.skip(problem, name, image_id, category_id)
    elif isinstance(segmentation, dict) and segmentation["size"] != [height, width]:
        errors.add("annotations whose RLE 'size' is not the image's [height, width]", name)
    else:
        check.usable.setdefault(image_id, []).append(
            {"bbox": bbox, "segmentation": segmentation, "category_id": category_id}
        )
