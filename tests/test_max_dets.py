"""references/fnoise/max_dets.py: COCO AP at several maxDets, and the study's paired differences at each."""

from __future__ import annotations

import json

import pytest
from pycocotools import mask as mask_utils

from _scripts import load_script

SQUARES = ((0.0, 0.0), (15.0, 0.0), (30.0, 0.0))  # three 10 px squares in one 40 x 40 image


@pytest.fixture(scope="module")
def script():
    return load_script("references/fnoise/max_dets.py")


def _polygon(x: float, y: float) -> list[float]:
    return [x, y, x + 10, y, x + 10, y + 10, x, y + 10]


def _detection(k: int) -> dict:
    """A perfect detection of square ``k``, scored 0.9, 0.8, 0.7 for k = 0, 1, 2."""
    x, y = SQUARES[k]
    rle = mask_utils.frPyObjects([_polygon(x, y)], 40, 40)[0]
    mask = {"size": [40, 40], "counts": rle["counts"].decode("ascii")}
    return {
        "image_id": 1,
        "category_id": 1,
        "bbox": [x, y, 10.0, 10.0],
        "score": 0.9 - 0.1 * k,
        "segmentation": mask,
    }


@pytest.fixture
def study(tmp_path):
    """The baseline finds all three squares in both seeds; arm ``x`` finds two in seed 0, three in seed 1."""
    annotations = [
        {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [x, y, 10.0, 10.0], "area": 100.0,
         "iscrowd": 0, "segmentation": [_polygon(x, y)]}
        for k, (x, y) in enumerate(SQUARES)
    ]  # fmt: skip
    gt = {
        "images": [{"id": 1, "file_name": "1.jpg", "height": 40, "width": 40}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "square"}],
    }
    (tmp_path / "val.json").write_text(json.dumps(gt))
    found = {("baseline", 0): 3, ("baseline", 1): 3, ("x", 0): 2, ("x", 1): 3}
    for (arm, seed), n in found.items():
        (tmp_path / f"{arm}-seed{seed}.json").write_text(json.dumps([_detection(k) for k in range(n)]))
    return tmp_path


def test_ap_counts_each_images_first_max_dets_and_differences_are_paired(script, study, capsys):
    out = study / "report.json"
    results = [str(p) for p in sorted(study.glob("*-seed*.json"))]
    argv = [
        "--ann",
        str(study / "val.json"),
        "--results",
        *results,
        "--max-dets",
        "2",
        "3",
        "--out",
        str(out),
    ]
    assert script.main(argv) == 0
    report = json.loads(out.read_text())
    two_thirds = 100.0 * 67 / 101  # precision 1 up to recall 2/3: 67 of COCO's 101 recall points
    at2, at3 = report["by_max_dets"]["2"], report["by_max_dets"]["3"]
    assert at2["recall_ceiling"] == pytest.approx(2 / 3) and at3["recall_ceiling"] == pytest.approx(1.0)
    for iou in ("segm", "bbox"):
        assert at2["arms"]["baseline"][iou]["values"] == pytest.approx([two_thirds, two_thirds])
        assert at3["arms"]["baseline"][iou]["values"] == pytest.approx([100.0, 100.0])
        assert at3["arms"]["x"][iou]["values"] == pytest.approx([two_thirds, 100.0])
    diff3 = next(d for d in at3["differences"] if d["metric"] == "segm")
    per_seed = [two_thirds - 100.0, 0.0]
    assert diff3["paired"] and diff3["n"] == 2
    assert diff3["mean"] == pytest.approx(sum(per_seed) / 2)
    half = 12.706 * abs(per_seed[0]) / 2**0.5 / 2**0.5  # t(1 df) x std / sqrt(2); std = |d0| / sqrt(2)
    assert diff3["ci95"] == pytest.approx([diff3["mean"] - half, diff3["mean"] + half], rel=1e-3)
    assert diff3["p_holm"] == pytest.approx(diff3["p"])  # one F-Noise arm: Holm changes nothing
    # at maxDets 2 the third square is out of reach for every run: the arms cannot differ
    assert next(d for d in at2["differences"] if d["metric"] == "segm")["mean"] == pytest.approx(0.0)
    printed = capsys.readouterr().out
    assert "| x | 0 | 66.3 | 66.3 | 66.3 | 66.3 |" in printed


def test_a_badly_named_results_file_is_a_one_line_error(script, study, capsys):
    bad = study / "baseline.json"
    bad.write_text("[]")
    assert script.main(["--ann", str(study / "val.json"), "--results", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}: name it <arm>-seed<S>.json"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[{", "not valid JSON (line 1, column 3"),
        ('{"image_id": 1}', "expected a JSON list of COCO results, got a dict"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}]', "entry 0 lacks score"),
        ('[{"image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}]', "entry 0: image id 7 is"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0], "score": 1}]', "entry 0: bbox must be"),
        ('[{"image_id": [1], "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}]', "entry 0: image id [1]"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": "high"}]', "entry 0: score must"),
    ],
)
def test_a_bad_results_file_is_a_one_line_error_naming_it(script, study, capsys, content, problem):
    bad = study / "x-seed0.json"
    bad.write_text(content)
    argv = ["--ann", str(study / "val.json"), "--results", str(study / "baseline-seed0.json"), str(bad)]
    assert script.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: {problem}") and "\n" not in err


def test_a_bad_annotation_file_is_a_one_line_error_naming_it(script, study, capsys):
    ann = study / "val.json"
    ann.write_text('{"images": [], "annotations": [{"id": 1}], "categories": []}')
    assert script.main(["--ann", str(ann), "--results", str(study / "baseline-seed0.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {ann}: not a COCO instances file (an entry lacks 'image_id')"


def test_no_reference_arm_is_an_error(script, study, capsys):
    argv = ["--ann", str(study / "val.json"), "--results", str(study / "x-seed0.json")]
    assert script.main(argv) == 2
    assert "no results of the reference arm 'baseline'" in capsys.readouterr().err


def test_one_seed_per_arm_prints_means_without_spread(script, study, capsys):
    results = [str(study / "baseline-seed0.json"), str(study / "x-seed0.json")]
    assert script.main(["--ann", str(study / "val.json"), "--results", *results, "--max-dets", "3"]) == 0
    # x found two of three squares; one seed: no std, no interval
    assert "| 3 | 1.000 | x | segm | 66.3 | 100.0 | -33.7 n/a | n/a |" in capsys.readouterr().out
