"""One image reader for every job: EXIF orientation, high bit depths, the pixel limit and one-line errors;
thresholds before mask pasting, one mask at a time."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection import transform as detection_transform

from fnoise_maskrcnn.data import CocoInstances
from fnoise_maskrcnn.inference import filter_by_score, predict_batch
from fnoise_maskrcnn.io.images import ImageError, ImageTooLargeError, read_image, read_image_tensor, to_rgb
from fnoise_maskrcnn.io.model_io import model_from_checkpoint
from fnoise_maskrcnn.precision import detection_autocast
from fnoise_maskrcnn.predict import main as predict_main


def _png(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def test_16_bit_image_keeps_its_contrast():
    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    assert Image.open(io.BytesIO(_png(ramp))).mode.startswith("I")
    pixels = read_image_tensor(_png(ramp))
    assert pixels.shape == (3, 32, 32)
    expected = torch.from_numpy(np.round(ramp / 257.0) / 255.0).float()
    torch.testing.assert_close(pixels[0], expected, atol=1 / 255 + 1e-6, rtol=0)
    assert pixels.min() == 0.0 and pixels.max() > 0.99 and 0.45 < pixels.mean() < 0.55  # not all white


def test_float_and_small_integer_images():
    unit = Image.fromarray(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4), mode="F")
    assert np.asarray(to_rgb(unit))[..., 0].max() == 255
    small = Image.fromarray(np.full((4, 4), 200, dtype=np.int32), mode="I")
    assert np.asarray(to_rgb(small)).max() == 200  # 8-bit data stored as 32-bit integers is kept


def _exif_rotated_jpeg() -> tuple[bytes, np.ndarray]:
    """A 40x20 JPEG whose EXIF orientation (6: rotate 90° clockwise) makes it 20x40 upright."""
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue(), array


def test_exif_rotated_jpeg_is_upright_for_training_predict_and_serve(tmp_path, inference_checkpoint):
    """The same upright picture reaches training (the dataset), predict (its overlay) and serve (its JSON
    size and its PNG overlay); a threshold of 1 keeps every detection out, so overlays are the image."""
    data, _ = _exif_rotated_jpeg()
    path = tmp_path / "images" / "rotated.jpg"
    path.parent.mkdir()
    path.write_bytes(data)
    ann = {
        "images": [{"id": 1, "file_name": "rotated.jpg", "height": 40, "width": 20}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 20, 20],
                "area": 400,
                "iscrowd": 0,
                "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]],
            }
        ],
        "categories": [{"id": 1, "name": "top"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    training, _ = CocoInstances(tmp_path / "images", tmp_path / "ann.json")[0]
    assert training.shape == (3, 40, 20)  # upright: taller than wide
    assert training[:, :20].mean() > 0.9 and training[:, 20:].mean() < 0.1  # the white half is on top
    upright = (training * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

    argv = ["--checkpoint", str(inference_checkpoint), str(path), "--out-dir", str(tmp_path / "out")]
    assert predict_main([*argv, "--score-thresh", "1"]) == 0
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "out" / "rotated.png").convert("RGB")), upright
    )

    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from fnoise_maskrcnn.deploy.service import create_app, running_server

    with running_server(create_app(inference_checkpoint, score_thresh=1.0, device="cpu")) as url:
        with httpx.Client(timeout=60) as client:
            files = {"image": ("rotated.jpg", data, "image/jpeg")}
            body = client.post(f"{url}/predict", files=files).json()
            overlay = client.post(f"{url}/predict", params={"format": "png"}, files=files)
    assert (body["width"], body["height"], body["instances"]) == (20, 40, [])
    assert overlay.status_code == 200
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(overlay.content)).convert("RGB")), upright)


def test_reader_errors_are_one_line_and_name_the_image(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (30, 20), (10, 20, 30)).save(good)
    assert read_image(good).size == (30, 20) and read_image(good).mode == "RGB"
    assert read_image_tensor(good, max_pixels=600).shape == (3, 20, 30)
    assert read_image_tensor(good, dtype=torch.uint8).dtype == torch.uint8

    truncated = tmp_path / "truncated.jpg"
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buffer, "JPEG"
    )
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "notes.jpg").write_text("hello")
    cases = [
        (tmp_path / "absent.png", ImageError, "absent.png: no such file"),
        (tmp_path, ImageError, "is a folder"),
        (tmp_path / "notes.jpg", ImageError, "notes.jpg: not a readable image"),
        (truncated, ImageError, "truncated.jpg: image cannot be decoded"),
        (b"GIF89a garbage", ImageError, "upload.gif: not a readable image"),
    ]
    for source, error, words in cases:
        with pytest.raises(error) as info:
            read_image(source, name="upload.gif" if isinstance(source, bytes) else None)
        message = str(info.value)
        assert words in message and "\n" not in message, message
    with pytest.raises(ImageTooLargeError) as info:
        read_image_tensor(good, max_pixels=599)
    assert str(info.value) == f"{good}: image is 30x20 = 600 pixels, over the limit of 599"


def test_predict_batch_gives_torchvisions_detections_with_binary_masks(inference_checkpoint, synthetic_coco):
    """predict_batch's own preparation (one image at a time, normalised in place) and postprocessing (masks
    pasted one at a time, as bool) give exactly the model's own output, from uint8 or float images: same
    boxes, labels and scores, and masks equal to its soft masks >= 0.5; the caller's images are unchanged."""
    model, _ = model_from_checkpoint(inference_checkpoint)
    paths = sorted(synthetic_coco.val_images.glob("*.jpg"))[:2]
    images = [read_image_tensor(p) for p in paths]
    with torch.inference_mode():
        expected = model(images)
    from_uint8 = predict_batch(model, [read_image_tensor(p, dtype=torch.uint8) for p in paths])
    from_float = predict_batch(model, images)
    assert sum(len(o["scores"]) for o in expected) >= 4
    for mine, theirs, image in [*zip(from_uint8, expected, images), *zip(from_float, expected, images)]:
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(mine[key], theirs[key]), key
        assert mine["masks"].dtype == torch.bool and mine["masks"].shape == (
            len(theirs["scores"]),
            1,
            *image.shape[1:],
        )
        assert torch.equal(mine["masks"], theirs["masks"] >= 0.5)
    assert all(torch.equal(image, read_image_tensor(p)) for image, p in zip(images, paths))


def test_predict_batch_under_bfloat16_autocast_gives_the_models_mixed_precision_detections(
    inference_checkpoint, synthetic_coco
):
    """With ``autocast_dtype=torch.bfloat16`` (``evaluate --amp``), predict_batch gives what the model gives
    under ``detection_autocast`` (what training's evaluation with ``--amp`` sees: bfloat16 layers, float32
    box geometry), as float32; that is neither torchvision's plain-autocast output, whose boxes are
    bfloat16-rounded, nor the float32 output, so the precision really changed."""
    model, _ = model_from_checkpoint(inference_checkpoint)
    paths = sorted(synthetic_coco.val_images.glob("*.jpg"))[:2]
    images = [read_image_tensor(p) for p in paths]
    with torch.inference_mode(), detection_autocast(model, "cpu", torch.bfloat16):
        expected = model(images)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain_autocast = model(images)
    mine = predict_batch(model, images, autocast_dtype=torch.bfloat16)
    float32 = predict_batch(model, images)
    assert sum(len(o["scores"]) for o in expected) >= 2
    for output, theirs, plain in zip(mine, expected, plain_autocast):
        assert theirs["boxes"].dtype == torch.float32 and plain["boxes"].dtype == torch.bfloat16
        assert output["boxes"].dtype == output["scores"].dtype == torch.float32
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(output[key], theirs[key].float()), key
        assert torch.equal(output["masks"], theirs["masks"].float() >= 0.5)
    assert any(
        a["scores"].shape != b["scores"].shape or not torch.equal(a["scores"], b["scores"])
        for a, b in zip(mine, float32)
    )


def test_score_threshold_is_applied_before_masks_are_pasted(
    inference_checkpoint, synthetic_coco, monkeypatch
):
    model, _ = model_from_checkpoint(inference_checkpoint)
    image = read_image_tensor(next(synthetic_coco.val_images.glob("*.jpg")))
    everything = predict_batch(model, [image], score_thresh=0.0)[0]
    scores = everything["scores"]
    assert len(scores) >= 4
    thresh = float(scores[len(scores) // 2])
    pasted = []
    paste = detection_transform.paste_masks_in_image

    def counting_paste(masks, boxes, *args, **kwargs):
        pasted.append(len(masks))
        return paste(masks, boxes, *args, **kwargs)

    monkeypatch.setattr(detection_transform, "paste_masks_in_image", counting_paste)
    kept = predict_batch(model, [image], score_thresh=thresh)[0]
    # only the kept detections' masks are pasted, one full-size mask at a time
    assert len(pasted) == int((scores >= thresh).sum()) == len(kept["scores"]) and set(pasted) == {1}
    assert torch.equal(kept["boxes"], everything["boxes"][scores >= thresh])
    assert torch.equal(kept["masks"], everything["masks"][scores >= thresh])
    assert model.roi_heads.score_thresh == pytest.approx(0.05)  # the model's own threshold is restored
    assert filter_by_score(kept, thresh)["masks"] is kept["masks"]  # nothing dropped: the masks not copied
    assert torch.equal(filter_by_score(kept, float(kept["scores"][0]))["masks"], kept["masks"][:1])
