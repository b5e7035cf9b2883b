"""The HTTP service over a real socket on loopback: predictions, overlays, metadata, bad requests,
concurrent requests, and the command line. All load is small and bounded; servers are always stopped."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from fnoise_maskrcnn.inference import predict_batch
from fnoise_maskrcnn.io.images import read_image_tensor
from fnoise_maskrcnn.io.model_io import model_from_checkpoint

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from fnoise_maskrcnn.deploy.service import ModelService, create_app, running_server  # noqa: E402

MAX_UPLOAD_BYTES = 60_000
MAX_PIXELS = 200 * 200
SCORE_THRESH = 0.1


@pytest.fixture(scope="module")
def val_files(synthetic_coco):
    images = sorted(json.loads(synthetic_coco.val_ann.read_text())["images"], key=lambda img: img["id"])
    return [synthetic_coco.val_images / img["file_name"] for img in images]


@pytest.fixture(scope="module")
def service(inference_checkpoint):
    return ModelService(inference_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def base_url(service):
    app = create_app(
        service, max_upload_bytes=MAX_UPLOAD_BYTES, max_pixels=MAX_PIXELS, score_thresh=SCORE_THRESH
    )
    with running_server(app) as url:
        yield url


def post_image(client, url: str, data: bytes, filename: str = "image.jpg", **params):
    return client.post(
        f"{url}/predict", params=params, files={"image": (filename, data, "application/octet-stream")}
    )


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_health_and_model_metadata(base_url, service):
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{base_url}/health").json() == {"status": "ok"}
        meta = client.get(f"{base_url}/model").json()
    assert meta["categories"] == service.categories and meta["num_classes"] == len(service.categories) + 1
    assert meta["arch"] == "mobilenet_v3" and meta["min_size"] == [128] and meta["max_size"] == 160
    assert (meta["max_upload_bytes"], meta["max_pixels"], meta["score_thresh"]) == (
        MAX_UPLOAD_BYTES,
        MAX_PIXELS,
        SCORE_THRESH,
    )


def test_predict_json_matches_the_model(base_url, inference_checkpoint, val_files):
    model, _ = model_from_checkpoint(inference_checkpoint)
    path = val_files[0]
    expected = predict_batch(model, [read_image_tensor(path)], score_thresh=SCORE_THRESH)[0]
    assert len(expected["scores"]) >= 2
    with httpx.Client(timeout=60) as client:
        response = post_image(client, base_url, path.read_bytes(), path.name)
    assert response.status_code == 200, response.text
    body = response.json()
    height, width = read_image_tensor(path).shape[1:]
    assert (body["height"], body["width"]) == (height, width)
    instances = body["instances"]
    assert len(instances) == len(expected["scores"])
    for instance, box, label, score, mask in zip(
        instances, expected["boxes"], expected["labels"], expected["scores"], expected["masks"]
    ):
        assert (
            instance["label"] == int(label)
            and instance["name"] == ["circle", "triangle", "rectangle", "star"][label - 1]
        )
        assert instance["score"] == pytest.approx(float(score), abs=1e-4)
        assert instance["box"] == pytest.approx(box.tolist(), abs=0.01)
        decoded = mask_utils.decode(
            {"size": instance["mask"]["size"], "counts": instance["mask"]["counts"].encode()}
        )
        np.testing.assert_array_equal(decoded, (mask[0] >= 0.5).numpy().astype(np.uint8))


def test_predict_png_overlay_and_score_thresh(base_url, val_files):
    path = val_files[0]
    with httpx.Client(timeout=60) as client:
        response = post_image(client, base_url, path.read_bytes(), path.name, format="png")
        none = post_image(client, base_url, path.read_bytes(), path.name, score_thresh="1.0")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(response.content))
    original = Image.open(path).convert("RGB")
    assert overlay.size == original.size
    assert (
        np.abs(
            np.asarray(overlay.convert("RGB"), dtype=np.int16) - np.asarray(original, dtype=np.int16)
        ).max()
        > 50
    )
    assert none.status_code == 200 and none.json()["instances"] == []


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("not an image", 415, "not a readable image"),
        ("too many bytes", 413, "over the limit"),
        ("too many pixels", 422, "pixels, over the limit"),
        ("no image field", 400, "'image'"),
        ("bad format", 400, "format"),
        ("bad score_thresh", 400, "score_thresh"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(base_url, val_files, case, status, words):
    good = val_files[0].read_bytes()
    with httpx.Client(timeout=30) as client:
        if case == "not an image":
            response = post_image(client, base_url, b"%PDF-1.4 definitely not a picture", "doc.pdf")
        elif case == "too many bytes":
            response = post_image(client, base_url, os.urandom(MAX_UPLOAD_BYTES + 1), "big.jpg")
        elif case == "too many pixels":
            data = encoded(Image.new("RGB", (250, 200)))  # 50 000 px > 40 000, yet a small file
            assert len(data) < MAX_UPLOAD_BYTES
            response = post_image(client, base_url, data, "wide.png")
        elif case == "no image field":
            response = client.post(f"{base_url}/predict", files={"picture": ("a.jpg", good)})
        elif case == "bad format":
            response = post_image(client, base_url, good, format="gif")
        else:
            response = post_image(client, base_url, good, score_thresh="high")
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert words in detail and "\n" not in detail


def test_concurrent_requests_get_their_own_answers(base_url, val_files):
    """8 requests over 4 connections at once; each answer equals the one for the same image alone."""
    with httpx.Client(timeout=60) as client:
        alone = {p.name: post_image(client, base_url, p.read_bytes(), p.name).json() for p in val_files}

    def request(path):
        with httpx.Client(timeout=120) as client:
            return path.name, post_image(client, base_url, path.read_bytes(), path.name)

    jobs = [val_files[i % len(val_files)] for i in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(request, jobs))
    for name, response in answers:
        assert response.status_code == 200
        assert response.json() == alone[name]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_command_line_serves_until_stopped(inference_checkpoint):
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "fnoise_maskrcnn.serve",
        "--checkpoint",
        str(inference_checkpoint),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        with httpx.Client(timeout=5) as client:
            while True:
                assert process.poll() is None, f"server exited: {process.stderr.read()[-500:]}"
                assert time.monotonic() < deadline, "server did not come up within 90 s"
                try:
                    health = client.get(f"http://127.0.0.1:{port}/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.25)
            assert health.json() == {"status": "ok"}
            assert (
                client.get(f"http://127.0.0.1:{port}/model").json()["checkpoint"] == inference_checkpoint.name
            )
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0


def test_command_line_errors_are_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fnoise_maskrcnn.serve", "--checkpoint", str(tmp_path / "none.pth")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip().startswith("error: ")
        and "none.pth" in result.stderr
        and result.stderr.count("\n") == 1
    )


def test_out_of_memory_is_a_503_with_one_line(inference_checkpoint, val_files):
    """Running out of memory in a forward pass is a 503 naming the upload, not a bare 500; the next
    request is served."""
    service = ModelService(inference_checkpoint, device="cpu")
    real = service.predict
    failures = iter([RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")])

    def predict_or_fail(*args, **kwargs):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(*args, **kwargs)

    service.predict = predict_or_fail
    path = val_files[0]
    with running_server(create_app(service, score_thresh=SCORE_THRESH)) as url:
        with httpx.Client(timeout=60) as client:
            failed = post_image(client, url, path.read_bytes(), path.name)
            served = post_image(client, url, path.read_bytes(), path.name)
    assert failed.status_code == 503
    detail = failed.json()["detail"]
    assert detail.startswith(f"{path.name}: out of memory while predicting") and "\n" not in detail
    assert served.status_code == 200 and served.json()["instances"]
