"""Cut a self-contained COCO-format dataset out of a larger one: some categories, some images, splits.

The library side of ``python -m fnoise_maskrcnn.data.subset``: :func:`make_subset` writes ``DIR/images/``
(copies, or links with ``link``) and one ``DIR/<split>.json`` per split, in the layout that
:class:`~fnoise_maskrcnn.data.CocoInstances` and ``--data`` options read. The kept categories keep their
original ids and names; images and annotations keep their ids; crowd annotations of the kept categories
are kept (for evaluation). :func:`format_table` is the table of images and instances per category and
split. The same arguments always give the same output.

Selection: with ``categories``, the images with at least one annotation of those categories (all images
otherwise), sorted by image id; ``max_images`` keeps the first N of them; they are then shuffled with
``seed`` and cut into the splits.

The annotation file is streamed (:mod:`.json_stream`), so memory grows with what is kept, not with
the size of the file: the full ``instances_train2017.json`` works on a laptop. Imports no torch.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io.atomic import write_text_atomic
from .annotations import DatasetError, check_annotations
from .json_stream import read_spans, scan_top_level


@dataclass
class _AnnotationIndex:
    """Per annotation, in file order: image id, category id, crowd flag and byte span; nothing else kept."""

    image_ids: array
    category_ids: array
    crowd: array
    starts: array
    ends: array


def parse_split(text: str) -> dict[str, float]:
    """``"train=0.8,val=0.1,test=0.1"`` -> ``{"train": 0.8, "val": 0.1, "test": 0.1}``; fractions sum to 1."""
    splits: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name in splits:
            raise ValueError(f"expected NAME=FRACTION,... with distinct names, got {text!r}")
        try:
            splits[name] = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number in {text!r}") from None
        if not 0 < splits[name] <= 1:
            raise ValueError(f"fractions must be in (0, 1], got {name}={value}")
    if not math.isclose(sum(splits.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must sum to 1, got {sum(splits.values()):g} in {text!r}")
    return splits


def split_sizes(num_images: int, fractions: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of ``fractions * num_images``: sizes sum to ``num_images`` exactly."""
    exact = {name: f * num_images for name, f in fractions.items()}
    sizes = {name: math.floor(v) for name, v in exact.items()}
    by_remainder = sorted(exact, key=lambda name: (-(exact[name] - sizes[name]), list(exact).index(name)))
    for name in by_remainder[: num_images - sum(sizes.values())]:
        sizes[name] += 1
    return sizes


def _index_annotation_file(ann_file: Path) -> tuple[dict[str, Any], dict[str, list], _AnnotationIndex]:
    """Stream the file once: keep images, categories and other small arrays whole, annotations as an index."""
    index = _AnnotationIndex(array("q"), array("q"), array("b"), array("q"), array("q"))
    arrays: dict[str, list] = {}

    def on_element(key: str, element: Any, start: int, end: int) -> None:
        if key != "annotations":
            arrays.setdefault(key, []).append(element)
            return
        if not (
            isinstance(element, dict)
            and isinstance(element.get("image_id"), int)
            and isinstance(element.get("category_id"), int)
        ):
            raise DatasetError(
                f"{ann_file}: annotation at byte {start} has no integer 'image_id'/'category_id'"
            )
        index.image_ids.append(element["image_id"])
        index.category_ids.append(element["category_id"])
        index.crowd.append(1 if element.get("iscrowd", 0) else 0)
        index.starts.append(start)
        index.ends.append(end)

    others = scan_top_level(ann_file, on_element)
    for key in ("images", "categories"):
        if key not in arrays and not isinstance(others.get(key), list):
            raise DatasetError(
                f"{ann_file}: '{key}' must be a non-empty list (is this a COCO instances file?)"
            )
    return others, arrays, index


@dataclass
class SubsetResult:
    """Written files and the per-split counts printed as a table."""

    ann_files: dict[str, Path]
    categories: list[dict]
    images: dict[str, int]  # split -> images
    table: dict[str, dict[int, tuple[int, int]]]  # split -> category id -> (images, instances)
    crowd: dict[str, int]  # split -> crowd annotations


def make_subset(
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    categories: Sequence[str] | None = None,
    max_images: int | None = None,
    split: dict[str, float] | None = None,
    seed: int = 0,
    link: str = "copy",
) -> SubsetResult:
    """Write the subset described in the module docstring; raise :class:`DatasetError` on bad input."""
    ann_file, image_dir, out_dir = Path(ann_file), Path(image_dir), Path(out_dir)
    split = split or {"train": 1.0}
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: image folder not found")
    others, arrays, index = _index_annotation_file(ann_file)
    kept_cats = _kept_categories(ann_file, arrays.get("categories", []), categories)
    kept_cat_ids = {c["id"] for c in kept_cats}

    ann_rows = [i for i, c in enumerate(index.category_ids) if c in kept_cat_ids]
    images_by_id = {
        img["id"]: img for img in arrays.get("images", []) if isinstance(img, dict) and "id" in img
    }
    with_kept = {index.image_ids[i] for i in ann_rows} if categories else None
    candidate_ids = _candidate_image_ids(ann_file, images_by_id, with_kept, max_images)
    split_of = _assign_splits(ann_file, candidate_ids, split, seed)

    kept_rows = [i for i in ann_rows if index.image_ids[i] in split_of]
    annotations = list(read_spans(ann_file, ((index.starts[i], index.ends[i]) for i in kept_rows)))
    images = [images_by_id[i] for i in candidate_ids]
    _check_image_files(ann_file, image_dir, images)
    full = {"images": images, "annotations": annotations, "categories": kept_cats}
    check_annotations(full, ann_file).raise_if_errors()

    out_dir.mkdir(parents=True, exist_ok=True)
    for img in images:
        _place_image(image_dir / img["file_name"], out_dir / "images" / img["file_name"], link)
    extra = {**others, **{k: v for k, v in arrays.items() if k not in full}}
    return _write_splits(out_dir, extra, full, split, split_of)


def _kept_categories(
    ann_file: Path, all_categories: list, names: Sequence[str] | None
) -> list[dict[str, Any]]:
    """The categories named in ``names`` (all when None or empty), sorted by id."""
    by_name = {c.get("name"): c for c in all_categories if isinstance(c, dict)}
    if not names:
        return sorted(all_categories, key=lambda c: c["id"])
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DatasetError(
            f"{ann_file}: unknown categories {unknown}; valid names: {', '.join(sorted(by_name))}"
        )
    return sorted((by_name[n] for n in dict.fromkeys(names)), key=lambda c: c["id"])


def _candidate_image_ids(
    ann_file: Path,
    images_by_id: dict[int, dict],
    with_kept: set[int] | None,
    max_images: int | None,
) -> list[int]:
    """Image ids to keep, sorted: those in ``with_kept`` (all images when None), the first ``max_images``."""
    candidate_ids = sorted(with_kept) if with_kept is not None else sorted(images_by_id)
    unknown_images = [i for i in candidate_ids if i not in images_by_id]
    if unknown_images:
        raise DatasetError(
            f"{ann_file}: {len(unknown_images)} image ids referenced by annotations are not in 'images' "
            f"(first: {unknown_images[0]})"
        )
    if max_images is not None:
        candidate_ids = candidate_ids[:max_images]
    if not candidate_ids:
        raise DatasetError(f"{ann_file}: no images to keep")
    return candidate_ids


def _assign_splits(
    ann_file: Path, candidate_ids: list[int], split: dict[str, float], seed: int
) -> dict[int, str]:
    """Image id -> split name: the ids shuffled with ``seed``, then cut by :func:`split_sizes`."""
    order = list(candidate_ids)
    random.Random(seed).shuffle(order)
    sizes = split_sizes(len(order), split)
    empty = [name for name, size in sizes.items() if size == 0]
    if empty:
        raise DatasetError(
            f"{ann_file}: split {empty[0]!r} would get none of the {len(order)} selected images"
        )
    split_of: dict[int, str] = {}
    offset = 0
    for name, size in sizes.items():
        split_of.update((image_id, name) for image_id in order[offset : offset + size])
        offset += size
    return split_of


def _check_image_files(ann_file: Path, image_dir: Path, images: list[dict]) -> None:
    missing = [
        img["file_name"] for img in images if not (image_dir / str(img.get("file_name", ""))).is_file()
    ]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DatasetError(f"{image_dir / missing[0]}: image file not found{more} (listed in {ann_file})")


def _write_splits(
    out_dir: Path,
    extra: dict[str, Any],
    full: dict[str, list],
    split: dict[str, float],
    split_of: dict[int, str],
) -> SubsetResult:
    """Write ``out_dir/<split>.json`` per split (``extra``: the file's other top-level members) and count."""
    kept_cats = full["categories"]
    kept_cat_ids = {c["id"] for c in kept_cats}
    result = SubsetResult({}, [{"id": c["id"], "name": c["name"]} for c in kept_cats], {}, {}, {})
    for name in split:
        split_images = [img for img in full["images"] if split_of[img["id"]] == name]
        split_anns = [a for a in full["annotations"] if split_of[a["image_id"]] == name]
        dataset = {**extra, "images": split_images, "annotations": split_anns, "categories": kept_cats}
        path = out_dir / f"{name}.json"
        write_text_atomic(json.dumps(dataset), path)
        result.ann_files[name] = path
        result.images[name] = len(split_images)
        instances = Counter(a["category_id"] for a in split_anns if not a.get("iscrowd", 0))
        with_cat = Counter(c for c, _ in {(a["category_id"], a["image_id"]) for a in split_anns})
        result.table[name] = {c: (with_cat[c], instances[c]) for c in kept_cat_ids}
        result.crowd[name] = sum(1 for a in split_anns if a.get("iscrowd", 0))
    return result


def _place_image(src: Path, dst: Path, link: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if link == "symlink":
        dst.symlink_to(src.resolve())
        return
    if link == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:  # other filesystem, or links not allowed: copy instead
            pass
    shutil.copyfile(src, dst)


def format_table(result: SubsetResult) -> str:
    """Images / instances (non-crowd) per category and split, with totals."""
    splits = list(result.ann_files)
    header = ["category", "id"] + [f"{s} {col}" for s in splits for col in ("images", "instances")]
    rows = [
        [c["name"], str(c["id"])] + [str(v) for s in splits for v in result.table[s][c["id"]]]
        for c in result.categories
    ]
    rows.append(
        ["total", ""]
        + [str(v) for s in splits for v in (result.images[s], sum(n for _, n in result.table[s].values()))]
    )
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
        for r in [header] + rows
    ]
    crowd = ", ".join(f"{s} {result.crowd[s]}" for s in splits)
    return "\n".join(lines + [f"crowd annotations (kept for evaluation, not counted above): {crowd}"])
