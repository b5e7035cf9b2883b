"""CocoInstances: targets from each segmentation format, filtering, image modes, bad input, synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

from fnoise_maskrcnn.data import CocoInstances, DatasetError, build_transforms
from fnoise_maskrcnn.data import shapes as synthetic
from fnoise_maskrcnn.data.annotations import check_annotations, instance_counts, training_warnings

H, W = 12, 16


def write_coco(
    root: Path, images: dict[str, Image.Image], annotations: list[dict], categories=None, **extra
) -> Path:
    """Write ``root/images/<name>`` and ``root/ann.json``; image ids are 1.. in the order of ``images``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for image_id, (name, image) in enumerate(images.items(), start=1):
        image.save(root / "images" / name, **extra.get("save_kwargs", {}).get(name, {}))
        width, height = extra.get("sizes", {}).get(name, image.size)
        entries.append({"id": image_id, "file_name": name, "width": width, "height": height})
    for ann_id, ann in enumerate(annotations, start=1):
        ann.setdefault("id", ann_id)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("category_id", 1)
        ann.setdefault("image_id", 1)
    categories = categories or [{"id": 1, "name": "thing"}]
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return ann_file


def rgb(width=W, height=H, value=(200, 100, 50)) -> Image.Image:
    return Image.new("RGB", (width, height), value)


def box_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE written out by hand: column-major run lengths, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def test_masks_from_polygon_uncompressed_and_compressed_rle(tmp_path):
    square = np.zeros((H, W), np.uint8)
    square[2:8, 2:8] = 1  # what pycocotools rasterises for the polygon below
    blob = np.zeros((H, W), np.uint8)
    blob[5:11, 9:15] = 1
    blob[7, 9] = 0
    stripe = np.zeros((H, W), np.uint8)
    stripe[0:3, 10:16] = 1
    compressed = mask_utils.encode(np.asfortranarray(stripe))
    anns = [
        {"bbox": box_of(square), "segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]]},
        {"bbox": box_of(blob), "segmentation": uncompressed_rle(blob)},
        {"bbox": box_of(stripe), "segmentation": {"size": [H, W], "counts": compressed["counts"].decode()}},
    ]
    ann_file = write_coco(tmp_path, {"a.png": rgb()}, anns)

    ds = CocoInstances(tmp_path / "images", ann_file)
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert torch.allclose(image[:, 0, 0], torch.tensor([200, 100, 50]) / 255.0)
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (3, H, W)
    for got, expected in zip(target["masks"], [square, blob, stripe]):
        assert torch.equal(got, torch.from_numpy(expected))
    assert torch.equal(target["boxes"], torch.tensor([[2.0, 2, 8, 8], [9, 5, 15, 11], [10, 0, 16, 3]]))
    assert target["boxes"].dtype == torch.float32
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1, 1, 1]
    assert target["image_id"] == 1 and isinstance(target["image_id"], int)
    assert type(target["boxes"]) is torch.Tensor  # transforms=None: plain tensors


def test_crowd_degenerate_short_polygon_and_empty_images(tmp_path):
    poly = [[2, 2, 8, 2, 8, 8, 2, 8]]
    crowd = np.zeros((H, W), np.uint8)
    crowd[8:12, 0:6] = 1
    anns = [
        {"bbox": [2, 2, 6, 6], "segmentation": poly},
        {"bbox": [0, 8, 6, 4], "segmentation": uncompressed_rle(crowd), "iscrowd": 1},
        {"bbox": [3, 3, 0, 4], "segmentation": poly},  # zero width
        {"bbox": [3, 3, 5, -2], "segmentation": poly},  # negative height
        {"bbox": [30, 3, 5, 5], "segmentation": poly},  # entirely right of the 16 px wide image
        {"bbox": [2, 2, 6, 6], "segmentation": [[2, 2, 8, 2]]},  # 2 points
        {"bbox": [3, 3, 1e-9, 4], "segmentation": poly},  # positive in the file, empty in float32
    ]
    ann_file = write_coco(tmp_path, {"a.png": rgb(), "empty.png": rgb()}, anns)

    ds = CocoInstances(tmp_path / "images", ann_file)
    assert len(ds) == 2 and ds.image_ids == [1, 2]
    _, target = ds[0]
    assert target["labels"].tolist() == [1]
    assert ds.skipped == {"degenerate box": 3, "polygon with fewer than 3 points": 1}
    crowd_ids = ds.coco.getAnnIds(imgIds=[1], iscrowd=True)
    assert [a["iscrowd"] for a in ds.coco.loadAnns(crowd_ids)] == [1]
    assert len(ds.coco.getAnnIds(imgIds=[1])) == 7  # evaluation ground truth keeps everything

    image, empty = ds[1]
    assert empty["image_id"] == 2
    assert empty["boxes"].shape == (0, 4) and empty["boxes"].dtype == torch.float32
    assert empty["labels"].shape == (0,) and empty["labels"].dtype == torch.int64
    assert empty["masks"].shape == (0, H, W) and empty["masks"].dtype == torch.uint8

    dropped = CocoInstances(tmp_path / "images", ann_file, drop_empty=True)
    assert dropped.image_ids == [1]
    assert dropped.coco.getImgIds() == [1]


def test_category_subset_maps_to_contiguous_labels(tmp_path):
    poly = [[2, 2, 8, 2, 8, 8, 2, 8]]
    categories = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 5, "name": "bus"}]
    anns = [
        {"image_id": 1, "category_id": 7, "bbox": [2, 2, 6, 6], "segmentation": poly},
        {"image_id": 1, "category_id": 3, "bbox": [2, 2, 6, 6], "segmentation": poly},
        {"image_id": 1, "category_id": 5, "bbox": [2, 2, 6, 6], "segmentation": poly},
        {"image_id": 2, "category_id": 3, "bbox": [2, 2, 6, 6], "segmentation": poly},
        {"image_id": 3, "category_id": 5, "bbox": [2, 2, 6, 6], "segmentation": poly},
    ]
    images = {"a.png": rgb(), "b.png": rgb(), "c.png": rgb()}
    ann_file = write_coco(tmp_path, images, anns, categories)

    full = CocoInstances(tmp_path / "images", ann_file)
    assert full.categories == [{"id": 3, "name": "cat"}, {"id": 5, "name": "bus"}, {"id": 7, "name": "dog"}]
    assert full[0][1]["labels"].tolist() == [3, 1, 2]

    ds = CocoInstances(tmp_path / "images", ann_file, categories=["dog", "bus"])
    assert ds.categories == [{"id": 5, "name": "bus"}, {"id": 7, "name": "dog"}]
    assert ds.image_ids == [1, 3]  # image 2 has only cats
    assert ds[0][1]["labels"].tolist() == [2, 1]
    assert ds[1][1]["labels"].tolist() == [1]
    assert sorted(ds.coco.getCatIds()) == [5, 7]
    assert {a["category_id"] for a in ds.coco.loadAnns(ds.coco.getAnnIds())} == {5, 7}

    assert CocoInstances(tmp_path / "images", ann_file, max_images=2).image_ids == [1, 2]

    with pytest.raises(DatasetError, match=r"unknown categories \['bird'\]; valid names: bus, cat, dog") as e:
        CocoInstances(tmp_path / "images", ann_file, categories=["dog", "bird"])
    assert str(ann_file) in str(e.value)


def test_training_warnings_for_no_annotations_and_selected_categories_without_instances():
    poly = [[2, 2, 8, 2, 8, 8, 2, 8]]
    categories = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 5, "name": "bus"}]
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": W, "height": H} for i in (1, 2)],
        "categories": categories,
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 2, 6, 6], "segmentation": poly},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [2, 2, 6, 6], "segmentation": poly},
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [2, 2, 0, 6], "segmentation": poly},  # skipped
            {
                "id": 4,
                "image_id": 2,
                "category_id": 5,
                "bbox": [2, 2, 6, 6],
                "segmentation": poly,
                "iscrowd": 1,
            },
        ],
    }
    check = check_annotations(data, "train.json")
    counts = instance_counts(check)
    assert counts == {3: 2} and instance_counts(check, [2]) == {3: 1} and instance_counts(check, [9]) == {}

    assert training_warnings("train.json", categories, counts) == []  # all categories: no selection
    assert training_warnings("train.json", categories, counts, ["cat"]) == []
    lines = training_warnings("train.json", categories, counts, ["cat", "dog", "bus"])
    assert lines == [
        "train.json: selected category 'dog' (id 7) has no usable training instances; the model will not "
        "learn it",
        "train.json: selected category 'bus' (id 5) has no usable training instances; the model will not "
        "learn it",
    ]
    (only,) = training_warnings("train.json", categories[1:], counts, ["dog", "bus"])
    assert only.startswith("train.json: no usable training annotations of the selected categories (dog, bus)")
    data["annotations"] = data["annotations"][2:]  # the crowd and the degenerate one are left
    (empty,) = training_warnings("train.json", categories, instance_counts(check_annotations(data, "t")))
    assert empty.startswith("train.json: no usable training annotations: every image is a negative")
    assert all("\n" not in line for line in [*lines, only, empty])


def test_grayscale_rgba_cmyk_and_exif_orientation_become_upright_rgb(tmp_path):
    exif_image = Image.new("RGB", (20, 10), (0, 0, 0))
    exif_image.putpixel((0, 0), (255, 255, 255))  # stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    images = {
        "gray.png": Image.new("L", (W, H), 128),
        "rgba.png": Image.new("RGBA", (W, H), (10, 20, 30, 0)),
        "cmyk.jpg": Image.new("CMYK", (W, H), (0, 0, 0, 0)),
        "rotated.jpg": exif_image,
    }
    ann_file = write_coco(
        tmp_path,
        images,
        [{"image_id": 4, "bbox": [0, 0, 5, 5], "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]}],
        save_kwargs={"rotated.jpg": {"exif": exif.tobytes(), "quality": 100}, "cmyk.jpg": {"quality": 100}},
        sizes={"rotated.jpg": (10, 20)},  # annotations are in the displayed (upright) frame
    )
    ds = CocoInstances(tmp_path / "images", ann_file, build_transforms(train=False))
    gray, rgba, cmyk = (ds[i][0] for i in range(3))
    rotated, target = ds[3]
    assert gray.shape == (3, H, W) and torch.allclose(gray, torch.full_like(gray, 128 / 255))
    assert rgba.shape == (3, H, W) and torch.allclose(rgba[:, 0, 0], torch.tensor([10, 20, 30]) / 255)
    assert cmyk.shape == (3, H, W) and cmyk.min() > 0.95  # CMYK (0,0,0,0) is white
    assert rotated.shape == (3, 20, 10)
    assert rotated[:, 0, -1].min() > 0.8 and rotated[:, 0, 0].max() < 0.2  # top-left went to top-right
    assert target["masks"].shape == (1, 20, 10)


def test_train_transforms_flip_boxes_and_masks_together(tmp_path):
    anns = [{"bbox": [2, 2, 6, 6], "segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]]}]
    ann_file = write_coco(tmp_path, {"a.png": rgb()}, anns)
    ds = CocoInstances(
        tmp_path / "images", ann_file, build_transforms(True, scale_jitter=True, photometric=True)
    )
    seen_flip = False
    torch.manual_seed(0)
    for _ in range(12):
        image, target = ds[0]
        assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and isinstance(
            target["masks"], tv_tensors.Mask
        )
        assert target["masks"].dtype == torch.uint8
        x1, y1, x2, y2 = target["boxes"][0].tolist()
        ys, xs = torch.nonzero(target["masks"][0], as_tuple=True)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == pytest.approx((x1, y1, x2, y2), abs=1)
        if image.shape[-2:] == (H, W) and x1 == 8:  # flipped, not zoomed out: 16 - 8
            seen_flip = True
    assert seen_flip


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"not valid JSON \(line 1, column 2"),
        ("[1, 2]", "expected a JSON object"),
        ('{"annotations": [], "categories": []}', "'images' must be a list, it is missing"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list, it is a dict"),
    ],
)
def test_malformed_annotation_files(tmp_path, content, message):
    (tmp_path / "images").mkdir()
    ann_file = tmp_path / "bad.json"
    ann_file.write_text(content)
    with pytest.raises(DatasetError, match=message) as e:
        CocoInstances(tmp_path / "images", ann_file)
    assert str(e.value).startswith(f"{ann_file}: ") and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "ann, message",
    [
        ({"image_id": 9}, "annotations referencing unknown images: annotation id 1 -> image_id 9"),
        ({"category_id": 4}, "annotations referencing unknown categories: annotation id 1 -> category_id 4"),
        ({"bbox": [1, 2]}, "annotations without a 'bbox' of 4 numbers: annotation id 1"),
        ({"segmentation": [[1, 2, 3]]}, "annotations with a malformed 'segmentation': annotation id 1"),
        ({"segmentation": {"size": [5, 5], "counts": [25]}}, "RLE 'size' is not the image's"),
    ],
)
def test_bad_annotations_name_the_file_and_annotation(tmp_path, ann, message):
    base = {"bbox": [2, 2, 6, 6], "segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]]}
    ann_file = write_coco(tmp_path, {"a.png": rgb()}, [{**base, **ann}])
    with pytest.raises(DatasetError, match=message) as e:
        CocoInstances(tmp_path / "images", ann_file)
    assert str(e.value).startswith(f"{ann_file}: ") and "\n" not in str(e.value)


def test_missing_files_and_corrupt_images(tmp_path):
    anns = [{"bbox": [2, 2, 6, 6], "segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]]}]
    ann_file = write_coco(tmp_path, {"a.png": rgb(), "b.png": rgb()}, anns)

    with pytest.raises(DatasetError, match="annotation file not found") as e:
        CocoInstances(tmp_path / "images", tmp_path / "nope.json")
    assert str(tmp_path / "nope.json") in str(e.value)
    with pytest.raises(DatasetError, match="image folder not found"):
        CocoInstances(tmp_path / "no_images", ann_file)

    (tmp_path / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = CocoInstances(tmp_path / "images", ann_file)
    ds[0]
    with pytest.raises(DatasetError, match="cannot read image") as e:
        ds[1]
    assert str(e.value).startswith(str(tmp_path / "images" / "b.png"))

    rgb(W + 1, H).save(tmp_path / "images" / "b.png")
    with pytest.raises(
        DatasetError,
        match=r"b.png: image is 17x12 \(after EXIF orientation\), the annotation file says 16x12",
    ):
        ds[1]

    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"b.png: image file not found \(listed in .*ann.json\)"):
        CocoInstances(tmp_path / "images", ann_file)


def test_synthetic_dataset_is_deterministic_and_well_formed(tmp_path, synthetic_coco):
    a = synthetic.generate(tmp_path / "a", 3, seed=5, num_val_images=1, size_range=(64, 96))
    b = synthetic.generate(tmp_path / "b", 3, seed=5, num_val_images=1, size_range=(64, 96))
    c = synthetic.generate(tmp_path / "c", 3, seed=6, num_val_images=1, size_range=(64, 96))
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert len(files) == 6  # 4 images + train.json + val.json
    for rel in files:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel
    assert (a.root / "train.json").read_bytes() != (c.root / "train.json").read_bytes()

    data = json.loads(synthetic_coco.train_ann.read_text())
    assert [c["name"] for c in data["categories"]] == ["circle", "triangle", "rectangle", "star"]
    kinds = {type(a["segmentation"]).__name__ for a in data["annotations"]}
    assert kinds == {"list", "dict"}  # polygons and compressed RLE
    ds = CocoInstances(synthetic_coco.train_images, synthetic_coco.train_ann)
    assert len(ds) == 8 and not ds.skipped
    sizes = set()
    for i in range(len(ds)):
        image, target = ds[i]
        h, w = image.shape[-2:]
        sizes.add((h, w))
        assert 128 <= h <= 192 and 128 <= w <= 192
        assert len(target["labels"]) >= 1
        areas = target["masks"].flatten(1).sum(1).tolist()
        anns = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[target["image_id"]]))
        assert areas == [a["area"] for a in anns]
    assert len(sizes) > 1


def test_default_dataset_is_generated_once_and_reused(tmp_path, monkeypatch):
    calls = []
    real_generate = synthetic.generate

    def small_generate(out_dir, num_images, seed, **kwargs):
        calls.append(out_dir)
        return real_generate(out_dir, 2, seed, num_val_images=1, size_range=(64, 64))

    monkeypatch.setattr(synthetic, "generate", small_generate)
    monkeypatch.setenv("FNOISE_MASKRCNN_CACHE", str(tmp_path / "cache"))
    first = synthetic.default_dataset()
    name = f"{synthetic.CACHE_VERSION}-{synthetic.DEFAULT_NUM_TRAIN}"
    assert first.root == tmp_path / "cache" / name
    assert first.train_ann.is_file() and first.val_ann.is_file()
    second = synthetic.default_dataset()
    assert second == first and len(calls) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [name]  # no temp dirs left


def test_larger_synthetic_training_set_keeps_the_same_validation_images(tmp_path):
    small = synthetic.generate(tmp_path / "small", 2, seed=0, num_val_images=2, size_range=(64, 80))
    large = synthetic.generate(tmp_path / "large", 5, seed=0, num_val_images=2, size_range=(64, 80))
    small_val, large_val = (json.loads(s.val_ann.read_text()) for s in (small, large))
    for a, b in zip(small_val["images"], large_val["images"]):
        assert (small.val_images / a["file_name"]).read_bytes() == (
            large.val_images / b["file_name"]
        ).read_bytes()
    assert [a["bbox"] for a in small_val["annotations"]] == [a["bbox"] for a in large_val["annotations"]]
    # the extra training images are new ones, and the first ones are unchanged
    assert (small.train_images / "000001.jpg").read_bytes() == (
        large.train_images / "000001.jpg"
    ).read_bytes()
