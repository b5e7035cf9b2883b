"""Command-line data tools: subset, validate, synthetic; and the streaming JSON reader under subset."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from conftest import write_images_only_coco
from fnoise_maskrcnn.data import (
    CocoInstances,
    DatasetError,
    subset,
    subsetting,
    synthetic,
    validate,
    validate_coco,
)
from fnoise_maskrcnn.data.json_stream import read_spans, scan_top_level


def run_subset(capsys, *args):
    try:
        code = subset.main([str(a) for a in args])
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_subset_writes_deterministic_splits_with_original_ids(tmp_path, capsys, synthetic_coco):
    source = json.loads(synthetic_coco.train_ann.read_text())
    common = [
        "--ann",
        synthetic_coco.train_ann,
        "--images",
        synthetic_coco.train_images,
        "--categories",
        "star,triangle",
        "--split",
        "train=0.5,val=0.25,test=0.25",
        "--seed",
        "3",
    ]
    code, out, err = run_subset(capsys, *common, "--out-dir", tmp_path / "a")
    assert code == 0, err
    assert run_subset(capsys, *common, "--out-dir", tmp_path / "b")[0] == 0
    for name in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{name}.json").read_bytes() == (
            tmp_path / "b" / f"{name}.json"
        ).read_bytes()

    kept = {2, 4}
    expected_images = sorted({a["image_id"] for a in source["annotations"] if a["category_id"] in kept})
    splits = {n: json.loads((tmp_path / "a" / f"{n}.json").read_text()) for n in ("train", "val", "test")}
    got_images = sorted(img["id"] for d in splits.values() for img in d["images"])
    assert got_images == expected_images
    n = len(expected_images)
    sizes = subsetting.split_sizes(n, {"train": 0.5, "val": 0.25, "test": 0.25})
    assert [len(d["images"]) for d in splits.values()] == list(sizes.values())
    for name, d in splits.items():
        assert d["categories"] == [c for c in source["categories"] if c["id"] in kept]
        ids = {img["id"] for img in d["images"]}
        expected = [a for a in source["annotations"] if a["image_id"] in ids and a["category_id"] in kept]
        assert d["annotations"] == expected  # original ids, untouched
        for img in d["images"]:
            assert (tmp_path / "a" / "images" / img["file_name"]).read_bytes() == (
                synthetic_coco.train_images / img["file_name"]
            ).read_bytes()
        ds = CocoInstances(tmp_path / "a" / "images", tmp_path / "a" / f"{name}.json")
        assert ds.categories == [{"id": 2, "name": "triangle"}, {"id": 4, "name": "star"}]

    # the printed table: images and instances per category and split
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:4]}
    for cat_id, cat_name in ((2, "triangle"), (4, "star")):
        cells = []
        for d in splits.values():
            anns = [a for a in d["annotations"] if a["category_id"] == cat_id]
            cells += [str(len({a["image_id"] for a in anns})), str(len(anns))]
        assert rows[cat_name] == [str(cat_id)] + cells
    assert rows["total"] == [
        str(v) for d in splits.values() for v in (len(d["images"]), len(d["annotations"]))
    ]


def test_subset_split_sizes_and_max_images(tmp_path, capsys, synthetic_coco):
    assert subsetting.split_sizes(10, {"train": 0.8, "val": 0.1, "test": 0.1}) == {
        "train": 8,
        "val": 1,
        "test": 1,
    }
    assert subsetting.split_sizes(7, {"a": 0.5, "b": 0.5}) == {"a": 4, "b": 3}
    assert subsetting.split_sizes(5, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}) == {"a": 2, "b": 2, "c": 1}
    code, out, err = run_subset(
        capsys,
        "--ann",
        synthetic_coco.train_ann,
        "--images",
        synthetic_coco.train_images,
        "--max-images",
        5,
        "--out-dir",
        tmp_path / "out",
    )
    assert code == 0, err
    data = json.loads((tmp_path / "out" / "train.json").read_text())
    assert [img["id"] for img in data["images"]] == [1, 2, 3, 4, 5]
    assert len(data["categories"]) == 4


def test_subset_keeps_crowd_annotations_and_counts_them(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (16, 12)).save(tmp_path / "images" / "a.png")
    poly = [[2, 2, 8, 2, 8, 8, 2, 8]]
    anns = [
        {
            "id": 10,
            "image_id": 7,
            "category_id": 5,
            "bbox": [2, 2, 6, 6],
            "segmentation": poly,
            "iscrowd": 0,
            "area": 36,
        },
        {
            "id": 11,
            "image_id": 7,
            "category_id": 5,
            "bbox": [0, 0, 4, 4],
            "iscrowd": 1,
            "area": 16,
            "segmentation": {"size": [12, 16], "counts": [0, 4, 8, 4, 8, 4, 8, 4, 152]},
        },
    ]
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": "a.png", "width": 16, "height": 12}],
                "annotations": anns,
                "categories": [{"id": 5, "name": "bus"}],
            }
        )
    )
    code, out, err = run_subset(
        capsys,
        "--ann",
        ann_file,
        "--images",
        tmp_path / "images",
        "--categories",
        "bus",
        "--out-dir",
        tmp_path / "out",
    )
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "train.json").read_text())["annotations"] == anns
    assert out.splitlines()[1].split() == ["bus", "5", "1", "1"]  # 1 image, 1 (non-crowd) instance
    assert "crowd annotations (kept for evaluation, not counted above): train 1" in out


def test_subset_bad_input_messages(tmp_path, capsys, synthetic_coco):
    args = [
        "--ann",
        synthetic_coco.train_ann,
        "--images",
        synthetic_coco.train_images,
        "--out-dir",
        tmp_path / "o",
    ]
    code, _, err = run_subset(capsys, *args, "--categories", "circle", "bus")
    assert code == 2
    assert err.strip() == (
        f"error: {synthetic_coco.train_ann}: unknown categories ['bus']; "
        "valid names: circle, rectangle, star, triangle"
    )
    code, _, err = run_subset(capsys, *args, "--split", "train=0.9,val=0.9")
    assert code == 2 and "--split: fractions must sum to 1" in err
    code, _, err = run_subset(capsys, *args, "--max-images", 1, "--split", "train=0.5,val=0.5")
    assert code == 2 and "split 'val' would get none of the 1 selected images" in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [], "annotations": [{"image_id": 1, "category_id": 1}, }')
    code, _, err = run_subset(capsys, "--ann", bad, "--images", tmp_path, "--out-dir", tmp_path / "o")
    assert code == 2 and err.startswith(f"error: {bad}: not valid JSON") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_subset_command_line_exit_code(tmp_path, synthetic_coco):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fnoise_maskrcnn.data.subset",
            "--ann",
            str(synthetic_coco.train_ann),
            "--images",
            str(synthetic_coco.train_images),
            "--categories",
            "hexagon",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown categories ['hexagon']; valid names: circle, rectangle, star, triangle" in proc.stderr


@pytest.mark.parametrize("chunk_size", [1, 7, 1 << 20])
def test_streaming_reader_matches_json_load(tmp_path, chunk_size):
    doc = {
        "info": {"description": "caf\u00e9 \u2603", "year": 2017},
        "images": [{"id": 1, "x": [1.5e3, -2]}],
        "empty": [],
        "annotations": [{"id": i, "segmentation": [[0.25] * 6], "name": "\u00fc" * i} for i in range(5)],
        "n": 12345,
    }
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")
    seen: dict[str, list] = {}
    elements: dict[str, list] = {}

    def on_element(key, element, start, end):
        seen.setdefault(key, []).append((start, end))
        elements.setdefault(key, []).append(element)

    others = scan_top_level(path, on_element, chunk_size=chunk_size)
    assert others == {"info": {"description": "caf\u00e9 \u2603", "year": 2017}, "n": 12345}
    assert elements == {"images": doc["images"], "annotations": doc["annotations"]}
    assert list(read_spans(path, seen["annotations"])) == doc["annotations"]
    assert list(read_spans(path, seen["images"])) == doc["images"]


@pytest.mark.parametrize("text", ['{"a": [1, 2', '{"a": [1 2]}', "[1]", '{"a": 1} x'])
def test_streaming_reader_rejects_malformed_json(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DatasetError, match="not valid JSON") as e:
        scan_top_level(path, lambda *a: None, chunk_size=3)
    assert str(e.value).startswith(f"{path}: ")


def test_validate_reports_every_problem_with_file_names(tmp_path, capsys, synthetic_coco):
    assert validate.main([str(synthetic_coco.val_ann), str(synthetic_coco.val_images)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "OK" and "4 images" in out

    images = tmp_path / "images"
    images.mkdir()
    for name in ("ok.png", "small.png"):
        Image.new("RGB", (16, 12)).save(images / name)
    (images / "small.png").write_bytes((images / "small.png").read_bytes()[:40])  # truncated
    Image.new("RGB", (10, 10)).save(images / "size.png")
    poly = [[2, 2, 8, 2, 8, 8, 2, 8]]
    data = {
        "images": [
            {"id": i, "file_name": n, "width": 16, "height": 12}
            for i, n in enumerate(["ok.png", "small.png", "size.png", "gone.png"], start=1)
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 6, 6], "segmentation": poly},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 2, -6, 6], "segmentation": poly},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [2, 2, 6, 6], "segmentation": [[1, 1, 2, 2]]},
            {"id": 4, "image_id": 99, "category_id": 1, "bbox": [2, 2, 6, 6], "segmentation": poly},
            {"id": 5, "image_id": 1, "category_id": 3, "bbox": [2, 2, 6, 6], "segmentation": poly},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(data))
    report = validate_coco(ann_file, images)
    assert not report.ok
    assert report.skipped == Counter({"degenerate box": 1, "polygon with fewer than 3 points": 1})
    assert validate.main([str(ann_file), str(images)]) == 2
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert errors == [
        f"error: {ann_file}: annotations referencing unknown images: annotation id 4 -> image_id 99",
        f"error: {ann_file}: annotations referencing unknown categories: annotation id 5 -> category_id 3",
        f"error: {images}: unreadable image files: {images / 'small.png'} "
        + errors[2].split("small.png ", 1)[1],
        f"error: {images}: images whose size differs from the annotation file's width x height: "
        f"{images / 'size.png'} is 10x10, the file says 16x12",
        f"error: {images}: image files not found: {images / 'gone.png'}",
    ]
    assert "skipped: 1 annotations with degenerate box (first: annotation id 2)" in captured.out

    assert validate.main([str(tmp_path / "none.json"), str(images)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'none.json'}: annotation file not found"


def test_validate_names_exif_rotation_mismatch(tmp_path):
    (tmp_path / "images").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (20, 10)).save(tmp_path / "images" / "r.jpg", exif=exif.tobytes())
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "r.jpg", "width": 20, "height": 10}],
                "annotations": [],
                "categories": [{"id": 1, "name": "x"}],
            }
        )
    )
    for decode in (True, False):
        report = validate_coco(ann_file, tmp_path / "images", decode=decode)
        assert report.errors == [
            f"{tmp_path / 'images'}: images whose size matches the file only without their "
            f"EXIF rotation: {tmp_path / 'images' / 'r.jpg'} is 10x20"
        ]


def test_validate_notes_high_bit_depth_images_from_their_header(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    deep = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300
    Image.fromarray(deep).save(images / "deep.png")
    Image.fromarray(np.full((12, 16), 0.5, dtype=np.float32)).save(images / "other.tif")
    Image.new("RGB", (16, 12)).save(images / "plain.png")
    assert Image.open(images / "deep.png").mode == "I;16"
    names = ["plain.png", "deep.png", "other.tif"]
    ann_file = write_images_only_coco(tmp_path / "ann.json", names)
    note = (
        f"note: {images}: 2 images with 16-bit, 32-bit integer or float pixels, converted to 8-bit by "
        f"scaling (first: {images / 'deep.png'}, mode I;16)"
    )
    for flags in ([], ["--no-decode"]):
        assert validate.main([str(ann_file), str(images), *flags]) == 0
        out = capsys.readouterr().out.splitlines()
        assert note in out and out[-1] == "OK"

    # The mode comes from the header: a 16-bit TIFF cut short after it is noted without a full decode.
    Image.new("RGB", (16, 12)).save(images / "deep.png")
    Image.fromarray(deep).save(images / "other.tif")
    (images / "other.tif").write_bytes((images / "other.tif").read_bytes()[:-200])
    expected = (
        f"{images}: 1 image with 16-bit, 32-bit integer or float pixels, converted to 8-bit by scaling "
    )
    expected += f"(first: {images / 'other.tif'}, mode I;16)"
    report = validate_coco(ann_file, images, decode=False)
    assert report.ok and report.notes == [expected]
    report = validate_coco(ann_file, images)  # decoding finds the cut file
    assert not report.ok and "unreadable image files" in report.errors[0] and report.notes == [expected]


def test_synthetic_command_line(tmp_path, capsys):
    assert (
        synthetic.main(
            [
                "--out-dir",
                str(tmp_path),
                "--num-images",
                "2",
                "--seed",
                "1",
                "--min-size",
                "64",
                "--max-size",
                "80",
            ]
        )
        == 0
    )
    assert "train.json" in capsys.readouterr().out
    data = json.loads((tmp_path / "train.json").read_text())
    assert len(data["images"]) == 2 and not (tmp_path / "val.json").exists()
    assert all(64 <= img["width"] <= 80 for img in data["images"])
    with pytest.raises(SystemExit) as e:
        synthetic.main(["--out-dir", str(tmp_path), "--num-images", "0"])
    assert e.value.code == 2


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_subset_links_images_instead_of_copying(tmp_path, capsys, synthetic_coco, link):
    args = ["--ann", synthetic_coco.val_ann, "--images", synthetic_coco.val_images, "--link", link]
    code, _, err = run_subset(capsys, *args, "--out-dir", tmp_path)
    assert code == 0, err
    for img in json.loads((tmp_path / "train.json").read_text())["images"]:
        placed, source = tmp_path / "images" / img["file_name"], synthetic_coco.val_images / img["file_name"]
        assert placed.is_symlink() == (link == "symlink")
        assert placed.samefile(source)
