"""COCO evaluation of a checkpoint: bbox and segm APs and per-category AP.

Command line::

    python -m fnoise_maskrcnn.evaluate --checkpoint CKPT --ann VAL.json --images DIR [--out metrics.json]
        [--results detections.json]

prints the bbox and segm tables (AP, AP50, AP75, APs, APm, APl) and the per-category APs, and writes
them as JSON (a category without any instance in the set is ``null``). How categories are matched and
what the numbers are: :mod:`fnoise_maskrcnn.evaluation.checkpoint_eval`, which does the work.
``--amp`` predicts in the precision that training's ``--amp`` gives on the device (bfloat16 on a CPU
with bfloat16 instructions), so that it reproduces the validation AP an ``--amp`` run logged.
``--backend faster-coco-eval`` uses the C++ COCOeval of the ``faster-coco-eval`` package, which gives the
same numbers as pycocotools (checked by the tests and by ``benchmarks/bench_cocoeval.py``).

Images over ``--max-pixels`` are refused before anything runs (their sizes are in the annotation file),
and running out of memory is one line that points to ``--max-pixels`` and ``--batch-size``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .data import DatasetError
from .device import resolve_device
from .evaluation.checkpoint_eval import evaluate_checkpoint
from .evaluation.coco import BACKENDS, format_metrics_table
from .inference import DEFAULT_MAX_PIXELS
from .io.atomic import write_bytes_atomic
from .io.checkpoint import CheckpointError
from .io.images import ImageError

__all__ = ["main"]


def _one_line(exc: BaseException) -> str:
    """``exc``'s message on one line. An error raised in a DataLoader worker arrives with the worker's
    traceback in its message; its last line is the original message."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and "Original Traceback" in str(exc):
        last = lines[-1]
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        return last.removeprefix(prefix).removeprefix(f"{type(exc).__name__}: ")
    return lines[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fnoise_maskrcnn.evaluate",
        description="COCO bbox and segm AP of a checkpoint on a COCO-format set (printed, and as JSON).",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by training")
    parser.add_argument("--ann", required=True, type=Path, help="COCO instances JSON of the evaluation set")
    parser.add_argument(
        "--images", required=True, type=Path, help="folder the annotation file's file_name are in"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="metrics JSON (default: <checkpoint stem>-<ann stem>-metrics.json next to the checkpoint)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="also write the detections here as a COCO results JSON (what COCO.loadRes reads)",
    )
    parser.add_argument("--batch-size", type=int, default=2, help="images per forward pass (default 2)")
    parser.add_argument("--workers", type=int, default=0, help="data loading processes (default 0)")
    parser.add_argument("--max-images", type=int, help="evaluate the first N images only (by image id)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse a set with an image over this many pixels, width*height (default {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument("--device", default="auto", help="'auto' (GPU when there is one), 'cpu', 'cuda' ...")
    parser.add_argument(
        "--amp",
        action="store_true",
        help="predict in the precision train's --amp gives here (bfloat16 on a CPU with bfloat16 "
        "instructions, float16 on CUDA, else float32), to reproduce an --amp run's validation AP",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="pycocotools", help="COCOeval implementation (same numbers)"
    )
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses bad values through ``parser.error`` (exit 2, usage line)."""
    for flag, value, minimum in (
        ("--batch-size", args.batch_size, 1),
        ("--workers", args.workers, 0),
        ("--max-images", args.max_images, 1),
        ("--max-pixels", args.max_pixels, 1),
    ):
        if value is not None and value < minimum:
            parser.error(f"{flag} must be >= {minimum}, got {value}")
    try:
        args.device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")
    if args.backend == "faster-coco-eval":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            parser.error("--backend faster-coco-eval needs the package: pip install 'fnoise-maskrcnn[eval]'")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    out = args.out or args.checkpoint.with_name(f"{args.checkpoint.stem}-{args.ann.stem}-metrics.json")
    try:
        metrics = evaluate_checkpoint(
            args.checkpoint,
            args.ann,
            args.images,
            batch_size=args.batch_size,
            device=args.device,
            workers=args.workers,
            max_images=args.max_images,
            max_pixels=args.max_pixels,
            backend=args.backend,
            results_file=args.results,
            amp=args.amp,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic((json.dumps(metrics, indent=2) + "\n").encode(), out)
    except (CheckpointError, DatasetError, ImageError, ValueError, OSError, MemoryError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(
        f"{metrics['images']} images, {metrics['detections']} detections, "
        f"COCO AP ({args.backend}, {metrics['precision']}):"
    )
    print(format_metrics_table(metrics))
    if metrics["categories_without_predictions"]:
        print(
            f"categories the model does not predict: {', '.join(metrics['categories_without_predictions'])}"
        )
    print(f"metrics written to {out}" + (f", detections to {args.results}" if args.results else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
