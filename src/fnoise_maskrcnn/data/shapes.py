"""A synthetic COCO-format instance segmentation dataset: shapes on textured backgrounds.

It is the data of the test suite and the default when training is started without data. The output is a
real COCO dataset (JPEG files plus ``train.json``/``val.json`` in the layout of ``../shared/data``) with
polygon and compressed RLE segmentations, so everything downstream reads it exactly like user data.

Each image has a smooth random background with noise and stripes, and 1..``max_instances`` shapes
(circle, triangle, rectangle, star) of 20-50% of the shorter side, varied aspect ratio and rotation, in
colours that stand out from the background under them, painted in order so that later shapes occlude
earlier ones (by at most 30% of a new shape's area). An instance that nothing covers is written as its
polygon; an occluded one as the compressed RLE of its visible part. Masks are rasterised with
pycocotools, so the painted pixels and the decoded annotation agree exactly. Output is byte-identical for
a given seed.

The library side of ``python -m fnoise_maskrcnn.data.synthetic``: :func:`generate` writes a dataset,
:func:`default_dataset` is the cached default set of training without data.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..io.atomic import write_text_atomic

CATEGORIES: tuple[dict, ...] = (
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "triangle", "supercategory": "shape"},
    {"id": 3, "name": "rectangle", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
)

#: Bump when the generator's output changes, so that stale caches are not reused.
CACHE_VERSION = "synthetic-v2"
DEFAULT_NUM_TRAIN = 64
#: The held-out validation set of the default dataset: the same 64 images whatever the training set's size.
DEFAULT_NUM_VAL = 64
_VAL_STREAM = 1
DEFAULT_SIZE_RANGE = (160, 192)
DEFAULT_MAX_INSTANCES = 4
_MIN_VISIBLE_PIXELS = 24


@dataclass(frozen=True)
class SyntheticSplits:
    """Paths of a generated dataset. ``val_ann`` is None when no validation images were generated."""

    root: Path
    train_ann: Path
    train_images: Path
    val_ann: Path | None
    val_images: Path | None


def _shape_polygon(name: str, rng: np.random.Generator, cx: float, cy: float, size: float) -> np.ndarray:
    """Vertices ``float64 [V, 2]`` (x, y) of a randomly rotated, stretched shape centred at (cx, cy)."""
    aspect = rng.uniform(0.6, 1.6)
    rx, ry = size / 2 * aspect**0.5, size / 2 / aspect**0.5
    if name == "circle":  # an ellipse, in fact: circles with an aspect ratio
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        pts = np.stack([rx * np.cos(t), ry * np.sin(t)], 1)
    elif name == "triangle":
        t = np.array([90.0, 210.0, 330.0]) + rng.uniform(-20, 20, 3)
        t = np.deg2rad(t)
        pts = np.stack([rx * np.cos(t), ry * np.sin(t)], 1)
    elif name == "rectangle":
        pts = np.array([[-rx, -ry], [rx, -ry], [rx, ry], [-rx, ry]])
    elif name == "star":
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        radius = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.4, 0.55))
        pts = np.stack([rx * radius * np.cos(t), ry * radius * np.sin(t)], 1)
    else:
        raise ValueError(f"unknown shape {name!r}")
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return pts @ rot.T + np.array([cx, cy])


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Textured background ``float32 [H, W, 3]`` in [0, 255]: smooth colour field + stripes + noise."""
    coarse = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 30)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    smooth += rng.uniform(5, 25) * stripes[..., None]
    smooth += rng.normal(0, 8, size=smooth.shape).astype(np.float32)
    return smooth


def _rasterize(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    rle = mask_utils.frPyObjects([polygon.ravel().tolist()], height, width)
    return mask_utils.decode(mask_utils.merge(rle)).astype(bool)


#: A new shape may cover at most this fraction of its area with earlier shapes (occlusion stays partial).
_MAX_OVERLAP = 0.3
#: Smallest RGB distance between a shape's colour and the mean background colour under it.
_MIN_CONTRAST = 80.0
_PLACEMENT_TRIES = 10


def _place_shape(rng: np.random.Generator, height: int, width: int, occupied: np.ndarray):
    """A (category, polygon, mask) that overlaps ``occupied`` by at most :data:`_MAX_OVERLAP`, or None."""
    for _ in range(_PLACEMENT_TRIES):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        size = rng.uniform(0.2, 0.5) * min(width, height)
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        polygon = _shape_polygon(category["name"], rng, cx, cy, size)
        polygon[:, 0] = polygon[:, 0].clip(0, width - 1)
        polygon[:, 1] = polygon[:, 1].clip(0, height - 1)
        polygon = np.round(polygon, 2)  # as written to JSON, so that mask and annotation agree
        full = _rasterize(polygon, height, width)
        area = full.sum()
        if area >= _MIN_VISIBLE_PIXELS and (full & occupied).sum() <= _MAX_OVERLAP * area:
            return category, polygon, full
    return None


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """An RGB colour at least :data:`_MIN_CONTRAST` away from ``background`` (float32 [3])."""
    colour = rng.uniform(0, 255, size=3).astype(np.float32)
    for _ in range(_PLACEMENT_TRIES):
        if np.linalg.norm(colour - background) >= _MIN_CONTRAST:
            break
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
    return colour


def _render_image(rng: np.random.Generator, image_id: int, size_range: tuple[int, int], max_instances: int):
    """Return (RGB uint8 [H, W, 3], list of annotation dicts without ids)."""
    width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    canvas = _background(rng, height, width)
    shapes = []  # (category, polygon, full mask) in painting order
    occupied = np.zeros((height, width), dtype=bool)
    for _ in range(int(rng.integers(1, max_instances + 1))):
        placed = _place_shape(rng, height, width, occupied)
        if placed is None:
            continue
        category, polygon, full = placed
        colour = _contrasting_colour(rng, canvas[full].mean(axis=0))
        texture = rng.normal(0, rng.uniform(2, 12), size=(height, width, 1)).astype(np.float32)
        canvas[full] = colour + texture[full]
        occupied |= full
        shapes.append((category, polygon, full))

    annotations = []
    covered = np.zeros((height, width), dtype=bool)
    for category, polygon, full in reversed(shapes):  # front to back
        visible = full & ~covered
        covered |= full
        if visible.sum() < _MIN_VISIBLE_PIXELS:
            continue  # hidden behind later shapes
        rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
        if visible.sum() == full.sum():
            segmentation = [polygon.ravel().tolist()]
        else:
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        annotations.append(
            {
                "image_id": image_id,
                "category_id": category["id"],
                "segmentation": segmentation,
                "area": float(mask_utils.area(rle)),
                "bbox": [x, y, w, h],
                "iscrowd": 0,
            }
        )
    annotations.reverse()  # back to painting order
    pixels = np.clip(canvas, 0, 255).astype(np.uint8)
    return pixels, annotations


def generate(
    out_dir: str | os.PathLike,
    num_images: int,
    seed: int,
    *,
    num_val_images: int = 0,
    size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
    max_instances: int = DEFAULT_MAX_INSTANCES,
) -> SyntheticSplits:
    """Write ``out_dir/images/*.jpg``, ``out_dir/train.json`` and, if ``num_val_images``, ``val.json``.

    Image ids run 1..num_images for train and on from there for val. A training image depends only on
    ``(seed, image_id)`` and a validation image only on ``(seed, its index among the validation images)``
    (and the size/instance settings), so the output is deterministic, and a larger training set keeps the
    same validation images.
    """
    if num_images < 1 or num_val_images < 0:
        raise ValueError(
            f"num_images must be >= 1 and num_val_images >= 0, got {num_images}, {num_val_images}"
        )
    if not 16 <= size_range[0] <= size_range[1]:
        raise ValueError(f"size_range must be (min, max) with 16 <= min <= max, got {size_range}")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    next_ann_id = 1
    splits = {"train": range(1, num_images + 1)}
    if num_val_images:
        splits["val"] = range(num_images + 1, num_images + num_val_images + 1)
    ann_files = {}
    for split, ids in splits.items():
        images, annotations = [], []
        for index, image_id in enumerate(ids):
            rng = np.random.default_rng([seed, image_id] if split == "train" else [seed, _VAL_STREAM, index])
            image, anns = _write_image(rng, image_dir, image_id, size_range, max_instances)
            images.append(image)
            annotations += [{"id": next_ann_id + k, **ann} for k, ann in enumerate(anns)]
            next_ann_id += len(anns)
        ann_files[split] = out_dir / f"{split}.json"
        write_text_atomic(json.dumps(_coco_dataset(seed, images, annotations)), ann_files[split])
    return SyntheticSplits(
        root=out_dir,
        train_ann=ann_files["train"],
        train_images=image_dir,
        val_ann=ann_files.get("val"),
        val_images=image_dir if num_val_images else None,
    )


def _write_image(
    rng: np.random.Generator,
    image_dir: Path,
    image_id: int,
    size_range: tuple[int, int],
    max_instances: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Render one image into ``image_dir``; return its COCO image record and its annotations (no ids)."""
    pixels, anns = _render_image(rng, image_id, size_range, max_instances)
    file_name = f"{image_id:06d}.jpg"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    (image_dir / file_name).write_bytes(buffer.getvalue())
    image = {"id": image_id, "file_name": file_name, "height": pixels.shape[0], "width": pixels.shape[1]}
    return image, anns


def _coco_dataset(seed: int, images: list[dict], annotations: list[dict]) -> dict[str, Any]:
    return {
        "info": {"description": f"fnoise_maskrcnn synthetic shapes ({CACHE_VERSION}), seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES],
    }


def _splits_at(root: Path) -> SyntheticSplits:
    return SyntheticSplits(root, root / "train.json", root / "images", root / "val.json", root / "images")


def default_cache_root(num_images: int = DEFAULT_NUM_TRAIN) -> Path:
    """``$FNOISE_MASKRCNN_CACHE/synthetic-v2-N`` or ``~/.cache/fnoise_maskrcnn/synthetic-v2-N``, N training
    images."""
    base = os.environ.get("FNOISE_MASKRCNN_CACHE")
    base_path = Path(base) if base else Path.home() / ".cache" / "fnoise_maskrcnn"
    return base_path / f"{CACHE_VERSION}-{num_images}"


def default_dataset(
    root: str | os.PathLike | None = None, num_images: int = DEFAULT_NUM_TRAIN
) -> SyntheticSplits:
    """The default synthetic dataset, generated on first use: ``num_images`` training images and the fixed
    64 validation images, 160-192 px, up to 4 shapes each, seed 0.

    It is generated into a temporary sibling directory and renamed into place, so an interrupted run never
    leaves a half-written dataset that later runs would reuse. Concurrent first uses are safe: the loser of
    the rename discards its copy.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    root = Path(root) if root is not None else default_cache_root(num_images)
    if (root / "val.json").is_file():
        return _splits_at(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    try:
        generate(tmp, num_images, seed=0, num_val_images=DEFAULT_NUM_VAL)
        try:
            os.replace(tmp, root)
        except OSError:
            if not (root / "val.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return _splits_at(root)
