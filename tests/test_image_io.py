"""One image conversion for every job: EXIF orientation and high bit depths; thresholds before mask
pasting."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection import transform as detection_transform

from fnoise_maskrcnn.checkpoint import model_from_checkpoint
from fnoise_maskrcnn.data import CocoInstances
from fnoise_maskrcnn.image_io import to_rgb
from fnoise_maskrcnn.inference import decode_image, predict_batch, read_image


def _png(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def test_16_bit_image_keeps_its_contrast():
    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    assert Image.open(io.BytesIO(_png(ramp))).mode.startswith("I")
    pixels = decode_image(_png(ramp))
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


def test_exif_orientation_is_applied_in_inference_and_training(tmp_path):
    data, _ = _exif_rotated_jpeg()
    path = tmp_path / "images" / "rotated.jpg"
    path.parent.mkdir()
    path.write_bytes(data)
    inference = read_image(path)
    assert inference.shape == (3, 40, 20)  # upright: taller than wide
    assert inference[:, :20].mean() > 0.9 and inference[:, 20:].mean() < 0.1  # white half now on top
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
    image, _ = CocoInstances(tmp_path / "images", tmp_path / "ann.json")[0]
    torch.testing.assert_close(image.float(), inference, atol=1e-6, rtol=0)


def test_score_threshold_is_applied_before_masks_are_pasted(
    inference_checkpoint, synthetic_coco, monkeypatch
):
    model, _ = model_from_checkpoint(inference_checkpoint)
    image = read_image(next(synthetic_coco.val_images.glob("*.jpg")))
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
    assert pasted == [int((scores >= thresh).sum())] == [len(kept["scores"])]
    assert torch.equal(kept["boxes"], everything["boxes"][scores >= thresh])
    assert model.roi_heads.score_thresh == pytest.approx(0.05)  # the model's own threshold is restored
