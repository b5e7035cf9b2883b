"""The real COCO-format sets (coco128, balloon, dsb2018_stage1test) in the folder that the environment
variable ``FNOISE_MASKRCNN_DATA`` names; every test here is skipped when it is unset or the set is absent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fnoise_maskrcnn.data import CocoInstances

#: Names a folder holding ``coco128/``, ``balloon/`` and ``dsb2018_stage1test/``, each with ``train.json``,
#: ``val.json`` and ``images/``.
DATA_ENV = "FNOISE_MASKRCNN_DATA"


def set_root(name: str, split: str) -> Path:
    """``$FNOISE_MASKRCNN_DATA/<name>``, or a skip when the variable is unset or the split is absent."""
    value = os.environ.get(DATA_ENV)
    if not value:
        pytest.skip(f"{DATA_ENV} is not set (a folder with coco128/, balloon/, dsb2018_stage1test/)")
    root = Path(value) / name
    if not (root / f"{split}.json").is_file():
        pytest.skip(f"{DATA_ENV}: no {name}/{split}.json there")
    return root


def load(name: str, split: str) -> CocoInstances:
    root = set_root(name, split)
    return CocoInstances(root / "images", root / f"{split}.json")


def test_coco128_official_annotations():
    ds = load("coco128", "train")
    data = json.loads((set_root("coco128", "train") / "train.json").read_text())
    assert len(ds) == 103 and len(ds.categories) == 80
    assert ds.categories[-1] == {"id": 90, "name": "toothbrush"}  # non-contiguous ids -> labels 1..80
    assert len(ds.coco.getAnnIds(iscrowd=True)) == 9 and len(ds.coco.getAnnIds()) == 826
    label_of = {c["id"]: i for i, c in enumerate(ds.categories, start=1)}
    by_file = {img["file_name"]: img["id"] for img in data["images"]}
    instances = 0
    for i in range(len(ds)):
        image, target = ds[i]
        image_id = target["image_id"]
        anns = [a for a in ds.coco.imgToAnns[image_id] if not a["iscrowd"]]
        assert target["labels"].tolist() == [label_of[a["category_id"]] for a in anns]
        assert target["masks"].shape == (len(anns), *image.shape[-2:])
        assert (target["masks"].flatten(1).sum(1) > 0).all()
        instances += len(anns)
        if image_id in (by_file["000000000250.jpg"], by_file["000000000508.jpg"]):
            assert len(target["labels"]) == 0  # negatives stay
        if image_id == by_file["000000000086.jpg"]:
            assert image.shape[0] == 3  # grayscale JPEG
    assert instances == 826 - 9


def test_balloon_large_polygon_images():
    ds = load("balloon", "val")
    assert len(ds) == 13 and ds.categories == [{"id": 1, "name": "balloon"}]
    total = 0
    for i in range(len(ds)):
        image, target = ds[i]
        assert (target["labels"] == 1).all()
        total += len(target["labels"])
        ys, xs = torch.nonzero(target["masks"][0], as_tuple=True)
        box = target["boxes"][0]
        assert abs(xs.min() - box[0]) <= 1 and abs(ys.max() + 1 - box[3]) <= 1
    assert total == 50


def test_dsb2018_nuclei_many_rle_instances():
    ds = load("dsb2018_stage1test", "val")
    assert sum(len(ds[i][1]["labels"]) for i in range(len(ds))) == 998
    train = load("dsb2018_stage1test", "train")
    crowded = max(range(len(train)), key=lambda i: len(train.coco.imgToAnns[train.image_ids[i]]))
    image, target = train[crowded]
    assert target["masks"].shape == (329, *image.shape[-2:])
    assert (target["masks"].flatten(1).sum(1) >= 21).all()  # smallest nucleus: 21 px
