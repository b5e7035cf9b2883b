"""predict: overlays and COCO results JSON from a checkpoint, batched, with clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from fnoise_maskrcnn.deploy.predict_files import output_names
from fnoise_maskrcnn.inference import predict_batch
from fnoise_maskrcnn.io.images import read_image_tensor
from fnoise_maskrcnn.io.model_io import model_from_checkpoint
from fnoise_maskrcnn.predict import main


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
    pixels = [read_image_tensor(p) for p in paths]
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
    default_count = len(predict_batch(model, [read_image_tensor(path)])[0]["scores"])
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


def _argv(checkpoint, images, out_dir, *more) -> list[str]:
    return ["--checkpoint", str(checkpoint), *map(str, images), "--out-dir", str(out_dir), *more]


def _one_line_errors(text: str) -> list[str]:
    lines = text.strip().splitlines()
    assert lines and all(line.startswith(("warning: ", "error: ")) for line in lines), text
    assert "Traceback" not in text
    return lines


def test_bad_inputs_are_one_line_errors(inference_checkpoint, val_images, tmp_path, capsys):
    good = val_images[0][1]
    assert main(_argv(tmp_path / "nope.pth", [good], tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope.pth: no such file" in err and "\n" not in err

    copy = tmp_path / "elsewhere.jpg"
    shutil.copy(good, copy)
    ann = inference_checkpoint.parent / "missing.json"
    assert main(_argv(inference_checkpoint, [copy], tmp_path / "o", "--ann", str(ann))) == 2
    assert "missing.json" in capsys.readouterr().err

    for image, words in ((tmp_path / "absent.jpg", "absent.jpg: no such file"), (tmp_path, "is a folder")):
        with pytest.raises(SystemExit) as exc:
            main(_argv(inference_checkpoint, [good, image], tmp_path / "o"))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and words in err.splitlines()[-1], err
    for flags, words in (
        (["--max-pixels", "0"], "--max-pixels must be >= 1"),
        (["--device", "tpu9"], "tpu9"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(_argv(inference_checkpoint, [good], tmp_path / "o", *flags))
        assert exc.value.code == 2 and words in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "o" / "results.json").exists()


def test_unreadable_and_too_large_images_are_skipped_and_the_others_written(
    inference_checkpoint, val_images, tmp_path, capsys
):
    """One unreadable and one over --max-pixels among good images: both are skipped with a warning that
    names them, the good ones get their overlays and results, and the exit status is 1."""
    good = [p for _, p in val_images[:2]]
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    large = tmp_path / "large.png"
    Image.new("RGB", (300, 200), (90, 90, 90)).save(large)
    limit = max(np.prod(Image.open(p).size) for p in good)
    assert limit < 300 * 200
    out = tmp_path / "out"
    images = [good[0], not_image, large, good[1]]
    argv = _argv(inference_checkpoint, images, out, "--score-thresh", "0.1", "--batch-size", "2")
    assert main([*argv, "--max-pixels", str(limit)]) == 1
    lines = _one_line_errors(capsys.readouterr().err)
    assert len(lines) == 3
    assert "notes.jpg: not a readable image" in lines[0] and lines[0].endswith("skipped")
    assert f"large.png: image is 300x200 = 60000 pixels, over the limit of {limit} (--max-pixels)" in lines[1]
    assert lines[2] == f"error: 2 of 4 images skipped (listed above); the other 2 are in {out}"
    results = json.loads((out / "results.json").read_text())
    assert results and {r["file_name"] for r in results} == {p.name for p in good}
    assert {r["image_id"] for r in results} == {1, 4}  # positions on the command line
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{good[0].stem}.png", f"{good[1].stem}.png", "results.json"]
    )

    assert main(_argv(inference_checkpoint, [not_image], tmp_path / "none")) == 1
    assert "no image could be predicted" in capsys.readouterr().err
    assert json.loads((tmp_path / "none" / "results.json").read_text()) == []


def test_out_of_memory_is_one_line_that_suggests_max_pixels(
    inference_checkpoint, val_images, tmp_path, capsys, monkeypatch
):
    from fnoise_maskrcnn.deploy import predict_files

    real = predict_files.predict_batch

    def fail_on_batches_of_two(model, images, *args, **kwargs):
        if len(images) == 2:
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"
            )
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(predict_files, "predict_batch", fail_on_batches_of_two)
    paths = [p for _, p in val_images[:3]]
    out = tmp_path / "out"
    assert main(_argv(inference_checkpoint, paths, out, "--batch-size", "2", "--score-thresh", "0.1")) == 1
    lines = _one_line_errors(capsys.readouterr().err)
    assert len(lines) == 3 and all("out of memory" in line for line in lines[:2])
    assert "try --max-pixels below" in lines[0] and "--batch-size 1" in lines[0]
    assert paths[0].name in lines[0] and paths[1].name in lines[0]
    assert {r["file_name"] for r in json.loads((out / "results.json").read_text())} == {paths[2].name}


_UNDER_A_MEMORY_CAP = """
import resource, sys
cap = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from fnoise_maskrcnn.predict import main
sys.exit(main(sys.argv[2:]))
"""


def test_predict_on_a_4096_square_image_under_a_6_gb_address_space_cap(tmp_path):
    """predict on a 4096 x 4096 image, every detection kept and its mask pasted at full resolution, in a
    process limited to 6 GB of address space (importing torch alone maps about 3.6 GB of it): masks are
    pasted one at a time as bool (16.8 MB each here) and RLE-encoded one at a time."""
    from _checkpoints import write_test_checkpoint

    checkpoint = write_test_checkpoint(tmp_path / "model.pth", detections_per_img=100, score_thresh=0.0)
    side = 4096
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    channels = [np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 255 - ramp) / 2, np.tile(ramp, (side, 1))]
    image = tmp_path / "big.jpg"
    Image.fromarray(np.stack(channels, -1).astype(np.uint8)).save(image, quality=90)
    del channels

    model, _ = model_from_checkpoint(checkpoint)
    model.roi_heads.mask_roi_pool = None  # no mask head: the detections without pasting any mask
    with torch.inference_mode():
        detections = len(model([read_image_tensor(image)])[0]["scores"])
    del model
    assert detections >= 3

    out = tmp_path / "out"
    argv = _argv(checkpoint, [image], out, "--device", "cpu", "--score-thresh", "0")
    result = subprocess.run(
        [sys.executable, "-c", _UNDER_A_MEMORY_CAP, str(6 * 2**30), *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert len(results) == detections and all(r["segmentation"]["size"] == [side, side] for r in results)
    assert Image.open(out / "big.png").size == (side, side)


def test_overlay_draws_masks_as_torchvision_does_a_band_at_a_time(monkeypatch):
    """draw_overlay blends masks a band of rows at a time (bounded memory on large images); the pixels are
    torchvision's draw_segmentation_masks' (overlaps dark), and pixels outside every mask are the image's."""
    from torchvision.utils import draw_segmentation_masks

    from fnoise_maskrcnn import inference

    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(3, 97, 131, generator=generator) * 255).to(torch.uint8)
    masks = torch.rand(5, 97, 131, generator=generator) > 0.7
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30), (200, 100, 50)]
    expected = draw_segmentation_masks(image, masks, alpha=0.45, colors=colors)
    monkeypatch.setattr(inference, "_BAND_PIXELS", 1000)  # 8 rows per band: 13 bands
    for given in (masks, masks.float() * 0.9):  # binary, or soft binarised at 0.5
        drawn = inference._draw_masks(image, given, colors, alpha=0.45)
        inside = masks.any(dim=0)
        assert torch.equal(drawn[:, inside], expected[:, inside])
        assert torch.equal(drawn[:, ~inside], image[:, ~inside])
