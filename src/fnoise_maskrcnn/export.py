"""Export a trained model to ONNX or TorchScript, without F-Noise.

Command line::

    python -m fnoise_maskrcnn.export --checkpoint CKPT --format onnx|torchscript --out FILE

What the files hold and how to run them: :mod:`fnoise_maskrcnn.deploy.export`, which does the work.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .deploy.export import FORMATS, export
from .io.checkpoint import CheckpointError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fnoise_maskrcnn.export",
        description="Export a checkpoint to ONNX (one image per run, any size) or TorchScript.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by training")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output format")
    parser.add_argument("--out", required=True, type=Path, help="output file (.onnx / .pt)")
    parser.add_argument(
        "--score-thresh",
        type=float,
        help="the exported model's box score threshold (default: the checkpoint's, 0.05)",
    )
    args = parser.parse_args(argv)
    if args.score_thresh is not None and not 0.0 <= args.score_thresh <= 1.0:
        parser.error(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    if args.out.is_dir():
        parser.error(f"--out {args.out}: is a folder, expected a file name")
    try:
        export(args.checkpoint, args.format, args.out, args.score_thresh)
    except (CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.format} model to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
