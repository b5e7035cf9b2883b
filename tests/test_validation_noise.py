"""references/fnoise/validation_noise.py: AP per disjoint chunk of a validation set, paired differences."""

from __future__ import annotations

import json

import pytest
from pycocotools import mask as mask_utils

from _scripts import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("references/fnoise/validation_noise.py")


def _square(image_id: int, ann_id: int) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "bbox": [10.0, 10.0, 20.0, 20.0],
        "area": 400.0,
        "iscrowd": 0,
        "segmentation": [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]],
    }


def _perfect(image_id: int) -> dict:
    box = [10.0, 10.0, 20.0, 20.0]
    return {"image_id": image_id, "category_id": 1, "bbox": box, "score": 0.9, "segmentation": None}


@pytest.fixture
def study_files(tmp_path):
    """Five images with one square each (ids 1-5). The reference finds all of them; the other model only
    those of images 1 and 2."""
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 40, "width": 40} for i in range(1, 6)]
    ann = {
        "images": images,
        "annotations": [_square(i, i) for i in range(1, 6)],
        "categories": [{"id": 1, "name": "square"}],
    }
    (tmp_path / "val.json").write_text(json.dumps(ann))
    rle = mask_utils.frPyObjects(_square(1, 1)["segmentation"], 40, 40)[0]
    square = {"size": [40, 40], "counts": rle["counts"].decode("ascii")}
    reference = [{**_perfect(i), "segmentation": square} for i in range(1, 6)]
    other = [{**_perfect(i), "segmentation": square} for i in (1, 2)]
    (tmp_path / "a.json").write_text(json.dumps(reference))
    (tmp_path / "b.json").write_text(json.dumps(other))
    return tmp_path


def test_chunks_are_disjoint_in_id_order_and_drop_the_rest(script):
    assert script.chunks([5, 3, 1, 2, 4], 2) == [[1, 2], [3, 4]]
    assert script.chunks([1, 2, 3], 4) == []


def test_chunk_scores_and_paired_differences_match_hand_computed_numbers(script, study_files, capsys):
    out = study_files / "report.json"
    argv = ["--ann", str(study_files / "val.json"), "--chunk", "2", "--out", str(out)]
    argv += ["--results", str(study_files / "a.json"), str(study_files / "b.json"), "--names", "ref", "two"]
    assert script.main(argv) == 0
    report = json.loads(out.read_text())
    assert (report["images"], report["chunks"], report["reference"]) == (5, 2, "ref")
    for iou in ("segm", "bbox"):
        ref, two = report["models"]["ref"][iou], report["models"]["two"][iou]
        assert ref["per_chunk"] == pytest.approx([100.0, 100.0]) and ref["whole_set"] == pytest.approx(100.0)
        assert two["per_chunk"] == pytest.approx([100.0, 0.0])
        # 2 of 5 found, all correct: precision 1 up to recall 0.4, i.e. 41 of COCO's 101 recall points
        assert two["whole_set"] == pytest.approx(100.0 * 41 / 101)
        diff = two["difference"]
        assert diff["per_chunk"] == pytest.approx([0.0, -100.0])
        assert (diff["chunk_mean"], diff["chunk_std"]) == pytest.approx((-50.0, 100.0 / 2**0.5))
        assert diff["whole_set"] == pytest.approx(100.0 * 41 / 101 - 100.0)
    assert "| two | segm | 40.6 | 50.0 ± 70.7 | -59.4 | -50.0 ± 70.7 |" in capsys.readouterr().out


def test_bad_inputs_are_one_line_errors_naming_the_file(script, study_files, capsys):
    val = str(study_files / "val.json")
    (study_files / "other.json").write_text(json.dumps([{**_perfect(99), "segmentation": None}]))
    (study_files / "broken.json").write_text("[{")
    for bad in ("other.json", "broken.json", "missing.json"):
        argv = ["--ann", val, "--results", str(study_files / "a.json"), str(study_files / bad)]
        assert script.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {study_files / bad}: ") and "\n" not in err
    results = ["--results", str(study_files / "a.json"), str(study_files / "b.json")]
    assert script.main(["--ann", val, "--chunk", "9", *results]) == 2
    assert "--chunk 9 is larger than the set's 5 images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--ann", val, *results, "--names", "same", "same"])
    assert exit_info.value.code == 2
    assert "--names needs 2 different names, one per --results file" in capsys.readouterr().err
