"""COCO evaluation of a checkpoint: tables and JSON, category matching, both COCOeval backends."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from fnoise_maskrcnn.evaluate import main
from fnoise_maskrcnn.evaluation.checkpoint_eval import evaluate_checkpoint
from fnoise_maskrcnn.evaluation.coco import (
    BACKENDS,
    STAT_NAMES,
    ap_at_max_dets,
    evaluate_coco,
    format_metrics_table,
    run_cocoeval,
)


@pytest.fixture(scope="module")
def edited_val_ann(synthetic_coco, tmp_path_factory):
    """The synthetic val set with every "star" removed (category kept) and an extra "hexagon" category
    that the model does not know, with one instance (a copy of the first annotation)."""
    data = json.loads(synthetic_coco.val_ann.read_text())
    star = next(c["id"] for c in data["categories"] if c["name"] == "star")
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != star]
    data["categories"].append({"id": 7, "name": "hexagon", "supercategory": "shape"})
    next_id = max(a["id"] for a in data["annotations"]) + 1
    data["annotations"].append({**data["annotations"][0], "id": next_id, "category_id": 7})
    path = tmp_path_factory.mktemp("edited_ann") / "val.json"
    path.write_text(json.dumps(data))
    return path


def test_evaluate_prints_tables_and_writes_json(
    inference_checkpoint, synthetic_coco, edited_val_ann, tmp_path, capsys
):
    out = tmp_path / "metrics.json"
    argv = [
        "--checkpoint",
        str(inference_checkpoint),
        "--ann",
        str(edited_val_ann),
        "--images",
        str(synthetic_coco.val_images),
        "--out",
        str(out),
        "--results",
        str(tmp_path / "detections.json"),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(out.read_text())
    # the detections written score again to the same numbers, without the model
    detections = json.loads((tmp_path / "detections.json").read_text())
    assert len(detections) == metrics["detections"]
    with contextlib.redirect_stdout(io.StringIO()):
        rescored = evaluate_coco(COCO(str(edited_val_ann)), detections)
    assert rescored["bbox"] == metrics["bbox"] and rescored["segm"] == metrics["segm"]

    assert metrics["images"] == 4 and metrics["detections"] > 0
    for iou_type in ("bbox", "segm"):
        assert set(metrics[iou_type]) == set(STAT_NAMES)
        assert all(-1.0 <= v <= 1.0 for v in metrics[iou_type].values())
        per_category = metrics["per_category"][iou_type]
        assert set(per_category) == {"circle", "triangle", "rectangle", "star", "hexagon"}
        assert per_category["star"] is None  # no instance in the set: n/a, not a crash and not 0
        assert per_category["hexagon"] == 0.0  # instances but the model cannot predict it
        assert all(v is None or 0.0 <= v <= 1.0 for v in per_category.values())
    assert metrics["categories_without_predictions"] == ["hexagon"]
    for name in ("AP50", "APl", "circle", "hexagon"):
        assert name in printed
    star_line = next(line for line in printed.splitlines() if line.startswith("star"))
    assert star_line.split()[1:] == ["n/a", "n/a"]
    # the tables are in percent and say so; the JSON holds fractions
    assert next(line for line in printed.splitlines() if line.startswith("metric")).split() == [
        "metric",
        "bbox",
        "(%)",
        "segm",
        "(%)",
    ]
    ap_line = next(line for line in printed.splitlines() if line.startswith("AP "))
    assert float(ap_line.split()[1]) == pytest.approx(100 * metrics["bbox"]["AP"], abs=0.05)


def _results_from_ground_truth(data: dict, jitter: float, seed: int = 0) -> list:
    """COCO results made from the annotations: boxes moved by up to ``jitter`` of their size, random
    scores, every fifth label changed; masks are the annotations' own."""
    rng = np.random.default_rng(seed)
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    cat_ids = [c["id"] for c in data["categories"]]
    results = []
    for k, ann in enumerate(data["annotations"]):
        h, w = sizes[ann["image_id"]]
        segm = ann["segmentation"]
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w)) if isinstance(segm, list) else segm
        if isinstance(rle["counts"], bytes):
            rle = {**rle, "counts": rle["counts"].decode("ascii")}
        x, y, bw, bh = ann["bbox"]
        dx, dy = rng.uniform(-jitter, jitter, 2) * (bw, bh)
        category = ann["category_id"] if k % 5 or not jitter else int(rng.choice(cat_ids))
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": category,
                "bbox": [x + dx, y + dy, bw, bh],
                "score": 0.9 if not jitter else float(rng.random()),
                "segmentation": rle,
            }
        )
    return results


def test_perfect_detections_score_ap_one(synthetic_coco):
    """COCOeval on results made from the ground truth itself gives AP 1 with both backends."""
    data = json.loads(synthetic_coco.val_ann.read_text())
    results = _results_from_ground_truth(data, jitter=0.0)
    cat_ids = [c["id"] for c in data["categories"]]
    img_ids = [img["id"] for img in data["images"]]
    for backend in BACKENDS:
        if backend == "faster-coco-eval":
            pytest.importorskip("faster_coco_eval")
        for iou_type in ("bbox", "segm"):
            stats, _ = run_cocoeval(data, results, iou_type, cat_ids, img_ids, backend)
            assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0), (backend, iou_type)


def test_faster_backend_gives_the_numbers_of_pycocotools(synthetic_coco):
    """On imperfect detections (0 < AP < 1), faster-coco-eval's metrics equal pycocotools' (the
    precision arrays to floating-point rounding), per category included."""
    pytest.importorskip("faster_coco_eval")
    data = json.loads(synthetic_coco.train_ann.read_text())
    results = _results_from_ground_truth(data, jitter=0.3)
    coco_gt = COCO()
    coco_gt.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    reference = evaluate_coco(coco_gt, results)
    fast = evaluate_coco(data, results, backend="faster-coco-eval")
    for iou_type in ("bbox", "segm"):
        assert 0.05 < reference[iou_type]["AP"] < 0.95  # a case where ranking and matching matter
        assert fast[iou_type] == pytest.approx(reference[iou_type], abs=1e-12)
        assert fast["per_category"][iou_type] == pytest.approx(reference["per_category"][iou_type], abs=1e-12)
    cat_ids = [c["id"] for c in data["categories"]]
    img_ids = [img["id"] for img in data["images"]]
    _, precision_ref = run_cocoeval(data, results, "segm", cat_ids, img_ids, "pycocotools")
    _, precision_fast = run_cocoeval(data, results, "segm", cat_ids, img_ids, "faster-coco-eval")
    np.testing.assert_allclose(precision_fast, precision_ref, rtol=0, atol=1e-12)


def test_ap_at_max_dets_counts_each_images_best_detections(synthetic_coco):
    """At 100 detections per image the AP is evaluate_coco's; fewer allowed detections lower it, with
    either backend alike."""
    data = json.loads(synthetic_coco.train_ann.read_text())
    results = _results_from_ground_truth(data, jitter=0.3)
    per_image = np.bincount([a["image_id"] for a in data["annotations"]])
    assert per_image.max() > 1  # a limit of one detection drops objects
    reference = evaluate_coco(data, results)
    for backend in BACKENDS:
        if backend == "faster-coco-eval" and importlib.util.find_spec("faster_coco_eval") is None:
            continue
        for iou_type in ("bbox", "segm"):
            aps = ap_at_max_dets(data, results, iou_type, [100, 1, 3], backend=backend)
            assert list(aps) == [1, 3, 100]
            assert aps[100] == pytest.approx(reference[iou_type]["AP"], abs=1e-12), (backend, iou_type)
            assert aps[1] < aps[3] <= aps[100], (backend, iou_type)
    boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    assert ap_at_max_dets(data, boxes_only, "segm", [1, 100]) == {1: 0.0, 100: 0.0}
    with pytest.raises(ValueError, match="max_dets must be positive"):
        ap_at_max_dets(data, results, "bbox", [0, 100])
    with pytest.raises(ValueError, match="iou_type must be one of bbox, segm; got 'keypoints'"):
        ap_at_max_dets(data, results, "keypoints", [100])


def test_evaluate_checkpoint_with_either_backend(inference_checkpoint, synthetic_coco):
    pytest.importorskip("faster_coco_eval")
    metrics = {
        backend: evaluate_checkpoint(
            inference_checkpoint, synthetic_coco.val_ann, synthetic_coco.val_images, backend=backend
        )
        for backend in BACKENDS
    }
    reference, fast = metrics["pycocotools"], metrics["faster-coco-eval"]
    assert reference["detections"] == fast["detections"] > 0
    for iou_type in ("bbox", "segm"):
        assert fast[iou_type] == pytest.approx(reference[iou_type], abs=1e-12)
        assert fast["per_category"][iou_type] == pytest.approx(reference["per_category"][iou_type], abs=1e-12)


def test_mismatched_categories_are_a_one_line_error(inference_checkpoint, synthetic_coco, tmp_path, capsys):
    data = json.loads(synthetic_coco.val_ann.read_text())
    data["categories"][0]["name"] = "person"
    ann = tmp_path / "other.json"
    ann.write_text(json.dumps(data))
    argv = [
        "--checkpoint",
        str(inference_checkpoint),
        "--ann",
        str(ann),
        "--images",
        str(synthetic_coco.val_images),
        "--out",
        str(tmp_path / "m.json"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "person" in err and "\n" not in err
    assert not (tmp_path / "m.json").exists()


def test_table_units_are_explicit():
    metrics = {
        "bbox": dict.fromkeys(STAT_NAMES, 0.5),
        "segm": {**dict.fromkeys(STAT_NAMES, 0.25), "APs": -1.0},
        "per_category": {"bbox": {"circle": 0.125, "star": None}, "segm": {"circle": 0.0, "star": None}},
    }
    lines = format_metrics_table(metrics).splitlines()
    assert lines[0].split() == ["metric", "bbox", "(%)", "segm", "(%)"]
    assert lines[1].split() == ["AP", "50.0", "25.0"] and lines[4].split() == ["APs", "50.0", "n/a"]
    assert lines[8].split() == ["category", "bbox", "(%)", "segm", "(%)"]
    assert lines[9].split() == ["circle", "12.5", "0.0"] and lines[10].split() == ["star", "n/a", "n/a"]


def _argv(checkpoint, ann, images, out, *more):
    return [
        "--checkpoint",
        str(checkpoint),
        "--ann",
        str(ann),
        "--images",
        str(images),
        "--out",
        str(out),
        *more,
    ]


def test_images_over_max_pixels_are_refused_before_running(
    inference_checkpoint, synthetic_coco, tmp_path, capsys, monkeypatch
):
    from fnoise_maskrcnn.evaluation import checkpoint_eval

    monkeypatch.setattr(
        checkpoint_eval, "model_from_checkpoint", lambda *a, **k: pytest.fail("the model was loaded")
    )
    data = json.loads(synthetic_coco.val_ann.read_text())
    largest = max(data["images"], key=lambda img: img["width"] * img["height"])
    pixels = largest["width"] * largest["height"]
    out = tmp_path / "m.json"
    argv = _argv(inference_checkpoint, synthetic_coco.val_ann, synthetic_coco.val_images, out)
    assert main([*argv, "--max-pixels", str(pixels - 1)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {synthetic_coco.val_images / largest['file_name']}: image is {largest['width']}x"
        f"{largest['height']} = {pixels} pixels, over the limit of {pixels - 1} (--max-pixels)"
    )
    assert not out.exists()


def test_out_of_memory_is_one_line_that_suggests_max_pixels(
    inference_checkpoint, synthetic_coco, tmp_path, capsys, monkeypatch
):
    from fnoise_maskrcnn.evaluation import checkpoint_eval

    out_of_memory = getattr(torch, "OutOfMemoryError", MemoryError)

    def fail(*args, **kwargs):
        raise out_of_memory("CUDA out of memory. Tried to allocate 2.00 GiB.\nSee documentation")

    monkeypatch.setattr(checkpoint_eval, "predict_batch", fail)
    out = tmp_path / "m.json"
    argv = _argv(inference_checkpoint, synthetic_coco.val_ann, synthetic_coco.val_images, out)
    assert main([*argv, "--batch-size", "2"]) == 2
    err = capsys.readouterr().err.strip()
    first_two = sorted(json.loads(synthetic_coco.val_ann.read_text())["images"], key=lambda i: i["id"])[:2]
    assert (
        "\n" not in err
        and err.startswith("error: ")
        and err.endswith("out of memory while predicting; try a smaller --max-pixels or --batch-size 1")
    )
    assert all(str(synthetic_coco.val_images / img["file_name"]) in err for img in first_two)
    assert not out.exists()


@pytest.fixture
def scored_by_training(monkeypatch) -> list:
    """The COCO results lists that training's ``evaluate_ap`` hands to COCOeval, in call order."""
    from fnoise_maskrcnn.engine import evaluation as training_evaluation

    scored = []
    real = training_evaluation.evaluate_coco
    monkeypatch.setattr(
        training_evaluation,
        "evaluate_coco",
        lambda gt, results, **kw: scored.append(results) or real(gt, results, **kw),
    )
    return scored


def _val_loader(synthetic_coco, batch_size: int = 2):
    """The synthetic validation set with the validation transforms, and its loader."""
    from fnoise_maskrcnn.data import CocoInstances, build_dataloader, build_transforms

    val_set = CocoInstances(synthetic_coco.val_images, synthetic_coco.val_ann, build_transforms(False))
    return val_set, build_dataloader(val_set, batch_size=batch_size, train=False)


def _assert_same_results(mine: list[dict], theirs: list[dict]) -> None:
    """The same COCO results entries (any order): categories and RLEs exactly, scores and boxes to print
    precision."""
    assert len(mine) == len(theirs) > 0
    key = lambda r: (r["image_id"], -r["score"], r["bbox"])  # noqa: E731
    for a, b in zip(sorted(mine, key=key), sorted(theirs, key=key)):
        assert a["category_id"] == b["category_id"] and a["segmentation"] == b["segmentation"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)


@pytest.mark.parametrize("amp", [False, True])
def test_evaluate_predicts_what_training_evaluated_in_the_same_precision(
    inference_checkpoint, synthetic_coco, tmp_path, scored_by_training, amp
):
    """evaluate (``--amp`` or not) writes exactly the detections that training's own evaluation scores for
    the same weights, batches and precision, so it reproduces a run's logged validation AP."""
    from fnoise_maskrcnn.engine import amp_precision
    from fnoise_maskrcnn.engine import evaluation as training_evaluation
    from fnoise_maskrcnn.io.model_io import model_from_checkpoint

    model, checkpoint = model_from_checkpoint(inference_checkpoint)
    val_set, loader = _val_loader(synthetic_coco)
    precision = amp_precision(torch.device("cpu"), amp)
    logged = training_evaluation.evaluate_ap(
        model, loader, torch.device("cpu"), checkpoint["categories"], val_set.coco, precision != "float32"
    )
    detections = tmp_path / "detections.json"
    argv = _argv(inference_checkpoint, synthetic_coco.val_ann, synthetic_coco.val_images, tmp_path / "m.json")
    assert main([*argv, "--batch-size", "2", "--results", str(detections), *(["--amp"] if amp else [])]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    written = json.loads(detections.read_text())
    assert metrics["precision"] == precision
    _assert_same_results(written, scored_by_training[0])
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type] == pytest.approx(
            {k: logged[iou_type][k] for k in metrics[iou_type]}, abs=1e-12
        )


def test_training_evaluation_scores_torchvisions_detections_pasting_one_mask_at_a_time(
    inference_checkpoint, synthetic_coco, scored_by_training, monkeypatch
):
    """Training's evaluate_ap scores exactly the detections of torchvision's ``model(images)``, but pastes
    each mask alone (as ``bool``): never all of an image's masks as one float ``[N, 1, H, W]`` tensor, which
    on large images with many detections took gigabytes."""
    from torchvision.models.detection import transform as detection_transform

    from fnoise_maskrcnn.engine import evaluation as training_evaluation
    from fnoise_maskrcnn.evaluation.coco import predictions_to_coco_results
    from fnoise_maskrcnn.io.model_io import model_from_checkpoint

    model, checkpoint = model_from_checkpoint(inference_checkpoint)
    categories = checkpoint["categories"]
    val_set, loader = _val_loader(synthetic_coco)
    pasted = []
    real_paste = detection_transform.paste_masks_in_image
    monkeypatch.setattr(
        detection_transform,
        "paste_masks_in_image",
        lambda masks, *args, **kw: pasted.append(masks.shape[0]) or real_paste(masks, *args, **kw),
    )
    training_evaluation.evaluate_ap(model, loader, torch.device("cpu"), categories, val_set.coco)
    assert set(pasted) == {1}

    pasted.clear()
    expected = []
    with torch.no_grad():
        for images, targets in loader:
            for output, target in zip(model.eval()(list(images)), targets):
                expected += predictions_to_coco_results([output], [int(target["image_id"])], categories)
    assert max(pasted) > 1  # torchvision pastes an image's masks together, so the check above can fail
    _assert_same_results(scored_by_training[0], expected)
