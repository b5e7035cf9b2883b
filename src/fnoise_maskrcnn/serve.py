"""Serve a trained model over HTTP (FastAPI + uvicorn, the ``serve`` extra).

Command line::

    python -m fnoise_maskrcnn.serve --checkpoint CKPT --host 127.0.0.1 --port 8000

Endpoints ``POST /predict`` (multipart field ``image``; ``?format=png``, ``?score_thresh=``),
``GET /health`` and ``GET /model``. What they answer, the limits, concurrency and memory:
:mod:`fnoise_maskrcnn.deploy.service`, which does the work.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .deploy.service import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    create_app,
    require_serve_extra,
    serve_forever,
)
from .device import resolve_device
from .io.checkpoint import CheckpointError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fnoise_maskrcnn.serve",
        description="Serve a checkpoint over HTTP: POST /predict (multipart 'image'), GET /health, /model.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by training")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--max-upload-bytes",
        type=int,
        default=DEFAULT_MAX_UPLOAD_BYTES,
        help=f"largest accepted image file (default {DEFAULT_MAX_UPLOAD_BYTES})",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=(
            f"largest accepted width*height (default {DEFAULT_MAX_PIXELS} = 4096x4096); a request may need "
            "about 116 bytes per pixel when every detection is returned"
        ),
    )
    parser.add_argument(
        "--score-thresh", type=float, default=0.5, help="default minimum score returned (default 0.5)"
    )
    parser.add_argument("--device", default="auto", help="'auto' (GPU when there is one), 'cpu', 'cuda' ...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_bytes < 1 or args.max_pixels < 1:
        parser.error("--max-upload-bytes and --max-pixels must be >= 1")
    if not 0.0 <= args.score_thresh <= 1.0:
        parser.error(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")
    try:
        require_serve_extra()
        app = create_app(
            args.checkpoint,
            max_upload_bytes=args.max_upload_bytes,
            max_pixels=args.max_pixels,
            score_thresh=args.score_thresh,
            device=device,
        )
    except (ImportError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve_forever(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
