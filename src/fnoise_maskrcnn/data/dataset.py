"""``CocoInstances``: any COCO instances dataset as (image, target) pairs for torchvision's Mask R-CNN.

Built on ``torchvision.datasets.CocoDetection`` + ``wrap_dataset_for_transforms_v2``, which load the image,
decode polygons / uncompressed RLE / compressed RLE into masks and give XYXY ``BoundingBoxes``. Done by
hand here, because the library does not do it:

* the annotation file is checked up front (:mod:`.annotations`), with one-line errors naming the file;
* crowd annotations, degenerate boxes and polygons with < 3 points are left out of the training targets
  (crowd annotations stay in :attr:`CocoInstances.coco`, the evaluation ground truth, as in COCO);
* category ids are mapped to contiguous labels 1..K (0 is background), optionally for a subset of the
  categories chosen by name;
* images with no annotations get empty ``boxes``/``labels``/``masks`` (the wrapper returns only
  ``image_id`` for them);
* images are read by :func:`fnoise_maskrcnn.io.images.read_image` (EXIF orientation, 16-bit scaling), and
  unreadable image files raise :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, VisionDataset, wrap_dataset_for_transforms_v2
from torchvision.transforms.v2 import functional as F

from ..io.images import ImageError, read_image
from .annotations import DatasetError, check_annotations, instance_counts, load_annotation_file

logger = logging.getLogger(__name__)

_TARGET_KEYS = {"image_id", "boxes", "masks", "labels"}


def make_coco(dataset: dict) -> COCO:
    """A pycocotools ``COCO`` over an in-memory dict, without re-reading a file or printing progress."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()
    return coco


class _CocoSource(CocoDetection):
    """``CocoDetection`` over an already loaded and checked ``COCO`` object.

    ``CocoDetection.__init__`` insists on reading ``annFile`` itself; we have already read and
    filtered it, so only ``VisionDataset.__init__`` is called. The two loaders are overridden to apply
    EXIF orientation, to name the file on read errors or a size that differs from the annotation file,
    and to return the cleaned training annotations whose ``category_id`` is already the contiguous label.
    """

    def __init__(self, root: str | os.PathLike, coco: COCO, train_anns: dict[int, list[dict]]) -> None:
        VisionDataset.__init__(self, root)
        self.coco = coco
        self.ids = sorted(coco.imgs)
        self.train_anns = train_anns

    def _load_image(self, id: int) -> Image.Image:
        path = os.path.join(self.root, self.coco.imgs[id]["file_name"])
        try:  # the package's one image reader: EXIF orientation, 16-bit scaling, one-line errors
            image = read_image(path)
        except ImageError as e:
            reason = str(e).removeprefix(f"{path}: ")
            if reason == "no such file":
                raise DatasetError(f"{path}: image file not found") from None
            raise DatasetError(f"{path}: cannot read image ({reason})") from None
        width, height = self.coco.imgs[id]["width"], self.coco.imgs[id]["height"]
        if image.size != (width, height):  # annotations would not fit the image
            raise DatasetError(
                f"{path}: image is {image.width}x{image.height} (after EXIF orientation), "
                f"the annotation file says {width}x{height}"
            )
        return image

    def _load_target(self, id: int) -> list[dict]:
        return self.train_anns.get(id, [])


def _training_annotations(
    usable: Mapping[int, list[dict]], label_of: Mapping[int, int]
) -> dict[int, list[dict]]:
    """The usable annotations of the kept categories per image id (images without any left out), with the
    contiguous label in ``category_id``: CocoDetection's wrapper turns ``category_id`` into
    ``target["labels"]`` as is."""
    train_anns = {
        image_id: [
            {**a, "category_id": label_of[a["category_id"]]} for a in anns if a["category_id"] in label_of
        ]
        for image_id, anns in usable.items()
    }
    return {k: v for k, v in train_anns.items() if v}


class CocoInstances(torch.utils.data.Dataset):
    """A COCO instances dataset for Mask R-CNN training and evaluation.

    Args:
        image_dir: folder the images' ``file_name`` are relative to.
        ann_file: COCO instances JSON.
        transforms: ``torchvision.transforms.v2`` callable on ``(image, target)``, e.g. from
            :func:`build_transforms`; it receives a PIL RGB image and must end with
            ``ToDtype(torch.float32, scale=True)``. ``None`` converts to a float tensor only.
        categories: keep only these category names (and only images with an annotation of one of them).
        max_images: keep the first ``max_images`` images by image id (after the other filters).
        drop_empty: leave out images without any training instance (by default they stay as negatives).

    Items are ``(image, target)``: ``image`` float32 ``[3, H, W]`` in [0, 1]; ``target`` with
    ``boxes`` float32 ``[N, 4]`` XYXY in pixels (``tv_tensors.BoundingBoxes`` unless ``transforms`` is
    None), ``labels`` int64 ``[N]`` in 1..K, ``masks`` uint8 ``[N, H, W]`` (``tv_tensors.Mask``) and
    ``image_id`` int.

    Label ``i`` (1-based) is ``categories[i - 1]``: the kept categories sorted by original id.

    Attributes:
        categories: ``[{"id": original id, "name": str}]`` in label order.
        coco: pycocotools ``COCO`` of the kept images and categories, crowd annotations included;
            usable directly as ``COCOeval`` ground truth.
        image_ids: kept image ids, in item order.
        skipped: ``Counter`` of annotations left out of the targets, by reason.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Callable | None = None,
        *,
        categories: Sequence[str] | None = None,
        max_images: int | None = None,
        drop_empty: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: image folder not found")
        if max_images is not None and max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")

        data = load_annotation_file(self.ann_file)
        check = check_annotations(data, self.ann_file)
        check.raise_if_errors()

        kept_cats = sorted(self._select_categories(data["categories"], categories), key=lambda c: c["id"])
        kept_cat_ids = {c["id"] for c in kept_cats}
        label_of = {c["id"]: label for label, c in enumerate(kept_cats, start=1)}
        self.categories = [{"id": c["id"], "name": c["name"]} for c in kept_cats]

        annotations = [a for a in data["annotations"] if a["category_id"] in kept_cat_ids]
        train_anns = _training_annotations(check.usable, label_of)
        with_kept = {a["image_id"] for a in annotations} if categories is not None else None
        image_ids = self._select_images(
            data["images"], with_kept, train_anns if drop_empty else None, max_images
        )
        kept_images = set(image_ids)

        self.skipped = self._skipped(check.skipped_anns, kept_images, kept_cat_ids)

        images = [img for img in data["images"] if img["id"] in kept_images]
        self._check_image_files(images)
        self.coco = make_coco(
            {
                **{k: v for k, v in data.items() if k not in ("images", "annotations", "categories")},
                "images": images,
                "annotations": [a for a in annotations if a["image_id"] in kept_images],
                "categories": [c for c in data["categories"] if c["id"] in kept_cat_ids],
            }
        )
        self.image_ids = image_ids
        #: Usable training instances per original category id, over the selected images.
        self.instance_counts = instance_counts(check, image_ids)
        self._sizes = {img["id"]: (img["height"], img["width"]) for img in images}
        self._source = wrap_dataset_for_transforms_v2(
            _CocoSource(
                self.image_dir, self.coco, {i: train_anns[i] for i in kept_images if i in train_anns}
            ),
            target_keys=_TARGET_KEYS,
        )

    def _skipped(
        self, skipped_anns: Iterable[tuple[str, int, int]], kept_images: set[int], kept_cat_ids: set[int]
    ) -> Counter:
        """The annotations of the kept images and categories left out of the targets, by reason (logged
        as one warning)."""
        skipped = Counter(
            reason
            for reason, image_id, cat_id in skipped_anns
            if image_id in kept_images and cat_id in kept_cat_ids
        )
        if skipped:
            summary = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
            logger.warning("%s: annotations left out of the training targets: %s", self.ann_file, summary)
        return skipped

    def _select_images(
        self,
        images: list[dict],
        with_kept_categories: set[int] | None,
        non_empty: Mapping[int, list] | None,
        max_images: int | None,
    ) -> list[int]:
        """Image ids in id order: those with a kept category (if selecting categories), with a training
        instance (if ``drop_empty``), then the first ``max_images``."""
        image_ids = sorted(img["id"] for img in images)
        if with_kept_categories is not None:
            image_ids = [i for i in image_ids if i in with_kept_categories]
        if non_empty is not None:
            image_ids = [i for i in image_ids if i in non_empty]
        if max_images is not None:
            image_ids = image_ids[:max_images]
        if not image_ids:
            raise DatasetError(f"{self.ann_file}: no images left after selecting categories/non-empty images")
        return image_ids

    def _select_categories(self, all_categories: list[dict], names: Sequence[str] | None) -> list[dict]:
        if names is None:
            return list(all_categories)
        by_name = {c["name"]: c for c in all_categories}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            valid = ", ".join(sorted(by_name))
            raise DatasetError(f"{self.ann_file}: unknown categories {unknown}; valid names: {valid}")
        return [by_name[n] for n in dict.fromkeys(names)]

    def _check_image_files(self, images: list[dict]) -> None:
        missing = [img["file_name"] for img in images if not (self.image_dir / img["file_name"]).is_file()]
        if missing:
            more = f" and {len(missing) - 1} more of {len(images)} images" if len(missing) > 1 else ""
            raise DatasetError(
                f"{self.image_dir / missing[0]}: image file not found{more} (listed in {self.ann_file})"
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    def get_height_and_width(self, index: int) -> tuple[int, int]:
        """Image size from the annotation file, without decoding the image."""
        return self._sizes[self.image_ids[index]]

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, in item order (for aspect-ratio grouped batching)."""
        return [w / h for h, w in (self._sizes[i] for i in self.image_ids)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = self._source[index]
        target = self._complete_target(image, target)
        if self.transforms is not None:
            return self.transforms(image, target)
        image = F.to_dtype(F.to_image(image), torch.float32, scale=True).as_subclass(torch.Tensor)
        plain = {
            k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in target.items()
        }
        return image, plain

    @staticmethod
    def _complete_target(image: Image.Image, target: dict) -> dict:
        """Fill empty targets, clip boxes to the image and drop boxes that clipping made empty.

        Degenerate boxes were already left out when the file was checked; this catches boxes that
        become empty only once clipped to float precision (e.g. [x, y, 1e-9, 5] after XYWH -> XYXY).
        """
        height, width = image.height, image.width
        if "boxes" not in target:  # image without training instances
            return {
                "boxes": tv_tensors.BoundingBoxes(
                    torch.zeros((0, 4)), format="XYXY", canvas_size=(height, width)
                ),
                "labels": torch.zeros((0,), dtype=torch.int64),
                "masks": tv_tensors.Mask(torch.zeros((0, height, width), dtype=torch.uint8)),
                "image_id": target["image_id"],
            }
        boxes = tv_tensors.wrap(F.clamp_bounding_boxes(target["boxes"]).float(), like=target["boxes"])
        labels, masks = target["labels"].to(torch.int64), target["masks"]
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not keep.all():  # indexing copies the masks: only when something is dropped
            boxes, labels, masks = boxes[keep], labels[keep], masks[keep]
        return {"boxes": boxes, "labels": labels, "masks": masks, "image_id": target["image_id"]}
