"""predict: overlays and COCO results JSON from a checkpoint, batched, with clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from fnoise_maskrcnn.checkpoint import model_from_checkpoint
from fnoise_maskrcnn.inference import predict_batch, read_image
from fnoise_maskrcnn.predict import main, output_names


@pytest.fixture(scope="module")
def val_images(synthetic_coco):
    images = sorted(json.loads(synthetic_coco.val_ann.read_text())["images"], key=lambda img: img["id"])
    return [(img["id"], synthetic_coco.val_images / img["file_name"]) for img in images]


def test_overlays_and_results_match_the_model(
    inference_checkpoint, synthetic_coco, val_images, tmp_path, capsys
):
    out = tmp_path / "out"
    paths = [p for _, p in val_images[:3]]
    argv = [
        "--checkpoint",
        str(inference_checkpoint),
        *map(str, paths),
        "--out-dir",
        str(out),
        "--score-thresh",
        "0.1",
        "--batch-size",
        "2",
        "--ann",
        str(synthetic_coco.val_ann),
    ]
    assert main(argv) == 0
    assert "3 images" in capsys.readouterr().out

    model, checkpoint = model_from_checkpoint(inference_checkpoint)
    pixels = [read_image(p) for p in paths]
    expected = predict_batch(model, pixels[:2], 0.1) + predict_batch(model, pixels[2:], 0.1)  # same batches
    results = json.loads((out / "results.json").read_text())
    assert len(results) == sum(len(o["scores"]) for o in expected) >= 3
    category_ids = {c["id"] for c in checkpoint["categories"]}
    for (image_id, path), image, output in zip(val_images, pixels, expected):
        mine = [r for r in results if r["image_id"] == image_id]
        assert len(mine) == len(output["scores"]) and all(r["file_name"] == path.name for r in mine)
        for entry, box, score in zip(mine, output["boxes"].tolist(), output["scores"].tolist()):
            assert entry["category_id"] in category_ids
            x, y, w, h = entry["bbox"]
            assert [x, y, x + w, y + h] == pytest.approx(box, abs=0.02)
            assert entry["score"] == pytest.approx(score, abs=1e-4)
            assert mask_utils.decode(
                {**entry["segmentation"], "counts": entry["segmentation"]["counts"].encode()}
            ).shape == tuple(image.shape[1:])

        overlay = np.asarray(Image.open(out / f"{path.stem}.png").convert("RGB"), dtype=np.int16)
        original = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        assert overlay.shape == original.shape
        if len(output["scores"]):
            assert np.abs(overlay - original).max() > 50  # something was drawn
        else:
            np.testing.assert_array_equal(overlay, original)  # nothing to draw: the image itself


def test_high_threshold_gives_empty_results(inference_checkpoint, val_images, tmp_path):
    path = val_images[0][1]
    assert (
        main(
            [
                "--checkpoint",
                str(inference_checkpoint),
                str(path),
                "--out-dir",
                str(tmp_path),
                "--score-thresh",
                "1",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "results.json").read_text()) == []
    overlay = np.asarray(Image.open(tmp_path / f"{path.stem}.png").convert("RGB"))
    np.testing.assert_array_equal(overlay, np.asarray(Image.open(path).convert("RGB")))


def test_threshold_below_the_models_own_is_honoured(inference_checkpoint, val_images, tmp_path):
    """--score-thresh 0.001 lowers the model's box_score_thresh (0.05), so more detections come back."""
    model, _ = model_from_checkpoint(inference_checkpoint)
    path = val_images[0][1]
    default_count = len(predict_batch(model, [read_image(path)])[0]["scores"])
    assert (
        main(
            [
                "--checkpoint",
                str(inference_checkpoint),
                str(path),
                "--out-dir",
                str(tmp_path),
                "--score-thresh",
                "0.001",
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) > default_count and min(r["score"] for r in results) < 0.05


def test_output_names_disambiguate_same_stems():
    assert output_names([Path("a/x.jpg"), Path("b/x.png"), Path("y.jpg")]) == ["x-1.png", "x-2.png", "y.png"]


def test_bad_inputs_are_one_line_errors(inference_checkpoint, val_images, tmp_path, capsys):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    assert (
        main(["--checkpoint", str(inference_checkpoint), str(not_image), "--out-dir", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "notes.jpg" in err and "\n" not in err

    assert (
        main(
            [
                "--checkpoint",
                str(tmp_path / "nope.pth"),
                str(val_images[0][1]),
                "--out-dir",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope.pth" in err and "\n" not in err

    copy = tmp_path / "elsewhere.jpg"
    shutil.copy(val_images[0][1], copy)
    assert (
        main(
            [
                "--checkpoint",
                str(inference_checkpoint),
                str(copy),
                "--out-dir",
                str(tmp_path / "o"),
                "--ann",
                str(inference_checkpoint.parent / "missing.json"),
            ]
        )
        == 2
    )
    assert "missing.json" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exc:
        main(
            [
                "--checkpoint",
                str(inference_checkpoint),
                str(tmp_path / "absent.jpg"),
                "--out-dir",
                str(tmp_path),
            ]
        )
    assert exc.value.code == 2 and "absent.jpg" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()
