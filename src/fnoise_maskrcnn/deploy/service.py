"""An HTTP service for a trained model (FastAPI + uvicorn, the ``serve`` extra): the library side of
``python -m fnoise_maskrcnn.serve``.

Endpoints of :func:`create_app`:

- ``POST /predict`` with a multipart form field ``image`` (any format PIL reads): JSON
  ``{"width", "height", "instances": [{"box": [x1, y1, x2, y2], "label", "category_id", "name",
  "score", "mask": COCO RLE}]}``; ``?format=png`` returns the image with the predictions drawn on it;
  ``?score_thresh=0.3`` overrides the server's threshold for this request (the model itself keeps
  detections from 0.05).
- ``GET /health``: ``{"status": "ok"}``.
- ``GET /model``: the model's metadata (architecture, categories, sizes, limits).

Bad requests get a 4xx with a one-line ``detail``: 400 (no ``image`` field, bad query value), 411
(no Content-Length), 413 (upload over ``max_upload_bytes``), 415 (not an image), 422 (image over
``max_pixels``; checked from the header before any pixel is decoded).

Running out of memory anyway gives a 503 with a one-line ``detail``, never a bare 500.

Concurrency: one model replica. Requests are received, decoded and encoded concurrently (in
Starlette's thread pool); the forward passes run one at a time under a lock, each using all of
PyTorch's intra-op threads. Run several processes (``uvicorn --workers`` style) for more replicas.

Memory: images are decoded as ``uint8`` (3 bytes per pixel) and a forward pass keeps only the masks of
the detections it returns, each pasted as one byte per pixel
(:func:`fnoise_maskrcnn.inference.predict_batch`). A request's worst case, ``score_thresh=0`` with the
model's ``detections_per_img`` (100) all returned, is about ``(100 + 16) * width * height`` bytes on
top of the model: about 2 GB at the default ``max_pixels`` of 4096 x 4096
(``benchmarks/bench_predict_memory.py`` measures it), and at most two requests hold their masks at once
(one encoding its answer while the next one runs).
"""

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..device import is_out_of_memory, resolve_device
from ..inference import draw_overlay, instances_to_json, png_bytes, predict_batch
from ..io.images import ImageError, ImageTooLargeError, read_image_tensor
from ..io.model_io import model_from_checkpoint

try:
    import uvicorn
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, Response
    from starlette.datastructures import UploadFile
except ImportError:  # the serve extra is not installed; require_serve_extra() says so
    FastAPI = None

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_MAX_PIXELS",
    "SERVE_EXTRA_MISSING",
    "ModelService",
    "require_serve_extra",
    "create_app",
    "running_server",
    "serve_forever",
]

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: 4096 x 4096: a request's worst case is about 2 GB on top of the model (see the module's "Memory").
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Room for the multipart boundaries and headers around the image in the request body.
_MULTIPART_OVERHEAD = 16 * 1024
SERVE_EXTRA_MISSING = "the HTTP service needs the serve extra: pip install 'fnoise-maskrcnn[serve]'"


def require_serve_extra() -> None:
    """Raises ``ImportError`` with :data:`SERVE_EXTRA_MISSING` when FastAPI or uvicorn is not installed."""
    if FastAPI is None:
        raise ImportError(SERVE_EXTRA_MISSING)


class ModelService:
    """One model replica shared by all requests; forward passes are serialised by a lock.

    Args:
        checkpoint: path to one of our checkpoints, or the loaded dict.
        device: ``"auto"`` (GPU when there is one), ``"cpu"``, ``"cuda"`` ...
    """

    def __init__(
        self, checkpoint: str | Path | Mapping[str, Any], device: str | torch.device | None = "auto"
    ) -> None:
        self.device = resolve_device(device)
        self.model, ckpt = model_from_checkpoint(checkpoint, device=self.device)
        self.categories = list(ckpt["categories"])
        self.checkpoint_name = Path(checkpoint).name if isinstance(checkpoint, (str, Path)) else None
        self.model_config = dict(ckpt["model_config"])
        self.epoch = ckpt.get("epoch")
        self._lock = threading.Lock()

    def predict(self, image: torch.Tensor, score_thresh: float | None = None) -> dict[str, torch.Tensor]:
        """Detections with ``score >= score_thresh`` for one ``uint8`` or ``float32 [3, H, W]`` image,
        thresholded inside the model so that dropped detections' masks are never pasted (see
        :func:`fnoise_maskrcnn.inference.predict_batch`)."""
        with self._lock:
            return predict_batch(self.model, [image], score_thresh, device=self.device)[0]

    def metadata(self) -> dict[str, Any]:
        transform = self.model.transform
        return {
            "checkpoint": self.checkpoint_name,
            "epoch": self.epoch,
            "arch": self.model_config.get("arch"),
            "num_classes": self.model_config.get("num_classes"),
            "categories": self.categories,
            "min_size": list(transform.min_size),
            "max_size": transform.max_size,
            "model_score_thresh": self.model.roi_heads.score_thresh,
            "detections_per_img": self.model.roi_heads.detections_per_img,
            "f_noise": self.model_config.get("f_noise"),  # used in training only; inactive here
            "device": str(self.device),
        }


def _bad_request(status: int, detail: str) -> "HTTPException":
    return HTTPException(status_code=status, detail=detail)


def _parse_score_thresh(value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        thresh = float(value)
    except ValueError:
        raise _bad_request(400, f"score_thresh must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= thresh <= 1.0:
        raise _bad_request(400, f"score_thresh must be in [0, 1], got {value}")
    return thresh


async def _read_upload(
    request: "Request", max_upload_bytes: int, max_pixels: int
) -> tuple[torch.Tensor, str]:
    """The uploaded ``image`` field, decoded as ``uint8 [3, H, W]`` (upright, 8-bit), and its file name.

    Raises:
        HTTPException: 411/400/413 for the body, 415 not an image, 422 over ``max_pixels`` (checked from the
            header before any pixel is decoded), 503 out of memory; one-line ``detail``.
    """
    length = request.headers.get("content-length")
    if length is None:
        raise _bad_request(411, "the request needs a Content-Length header")
    if not length.isdigit():
        raise _bad_request(400, f"invalid Content-Length {length!r}")
    if int(length) > max_upload_bytes + _MULTIPART_OVERHEAD:
        raise _bad_request(413, f"upload of {length} bytes is over the limit of {max_upload_bytes} bytes")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as exc:  # Starlette raises several types for malformed bodies
        raise _bad_request(400, f"expected a multipart/form-data body with an 'image' file: {exc}") from None
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise _bad_request(400, "expected a multipart/form-data body with an 'image' file field")
    data = await upload.read(max_upload_bytes + 1)
    if len(data) > max_upload_bytes:
        raise _bad_request(413, f"image file is over the limit of {max_upload_bytes} bytes")
    source = upload.filename or "image"
    try:
        image = await run_in_threadpool(
            read_image_tensor, data, name=source, max_pixels=max_pixels, dtype=torch.uint8
        )
    except ImageTooLargeError as exc:
        raise _bad_request(422, str(exc)) from None
    except ImageError as exc:
        raise _bad_request(415, str(exc)) from None
    except MemoryError:
        raise _bad_request(503, f"{source}: out of memory while decoding the image; retry later") from None
    return image, source


def create_app(
    checkpoint: str | Path | Mapping[str, Any] | ModelService,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    score_thresh: float = 0.5,
    device: str | torch.device | None = "auto",
) -> "FastAPI":
    """The FastAPI application serving one model.

    Args:
        checkpoint: a checkpoint path or dict (loaded here), or a ready :class:`ModelService`.
        max_upload_bytes: largest accepted image file, in bytes.
        max_pixels: largest accepted ``width * height``.
        score_thresh: default minimum score of returned detections.
    """
    require_serve_extra()
    service = checkpoint if isinstance(checkpoint, ModelService) else ModelService(checkpoint, device)
    limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "score_thresh": score_thresh}
    app = FastAPI(title="fnoise-maskrcnn", summary="Mask R-CNN instance segmentation")
    app.state.service = service

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model")
    def model_metadata() -> dict[str, Any]:
        return {**service.metadata(), **limits}

    @app.post("/predict", responses={200: {"content": {"image/png": {}}}})
    async def predict(request: Request) -> Response:
        fmt = request.query_params.get("format", "json")
        if fmt not in ("json", "png"):
            raise _bad_request(400, f"format must be 'json' or 'png', got {fmt!r}")
        thresh = _parse_score_thresh(request.query_params.get("score_thresh"), score_thresh)
        image, source = await _read_upload(request, max_upload_bytes, max_pixels)
        try:
            output = await run_in_threadpool(service.predict, image, thresh)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            raise _bad_request(
                503, f"{source}: out of memory while predicting; retry later or send a smaller image"
            ) from None
        if fmt == "png":
            overlay = await run_in_threadpool(
                lambda: png_bytes(draw_overlay(image, output, service.categories))
            )
            return Response(content=overlay, media_type="image/png")
        instances = await run_in_threadpool(instances_to_json, output, service.categories)
        return JSONResponse(
            {"width": int(image.shape[2]), "height": int(image.shape[1]), "instances": instances}
        )

    return app


@contextlib.contextmanager
def running_server(app: "FastAPI", host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[str]:
    """Runs ``app`` with uvicorn in a background thread on a free port; yields its base URL.

    The server is shut down (and the thread joined) when the ``with`` block ends, also on errors.
    For tests and benchmarks; the command line runs uvicorn in the foreground.
    """
    require_serve_extra()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {timeout:.0f} s")
            time.sleep(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def serve_forever(app: "FastAPI", host: str, port: int) -> None:
    """Runs ``app`` with uvicorn in the foreground until it is stopped (Ctrl-C, SIGTERM)."""
    require_serve_extra()
    uvicorn.run(app, host=host, port=port, log_level="info")
