"""Draw a trained model's predictions on images and write them as COCO results.

Command line::

    python -m fnoise_maskrcnn.predict --checkpoint CKPT IMAGE... --out-dir DIR [--score-thresh 0.5]

writes ``DIR/<image stem>.png`` (the image with masks, boxes and "name score" labels) for each image
and ``DIR/results.json``: COCO results entries (``image_id``, original ``category_id``, ``bbox`` XYWH,
``score``, RLE ``segmentation``) plus the ``file_name`` of the image. Image ids are the images'
positions on the command line (1-based) or, with ``--ann``, their ids in a COCO annotation file, so
the file can be scored with pycocotools directly. The work is
:func:`fnoise_maskrcnn.deploy.predict_files.predict_files`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .deploy.predict_files import image_ids_from_annotations, predict_files
from .device import resolve_device
from .inference import DEFAULT_MAX_PIXELS
from .io.checkpoint import CheckpointError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fnoise_maskrcnn.predict",
        description="Draw a checkpoint's predictions on images (PNG overlays); write COCO results JSON.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by training")
    parser.add_argument(
        "images", nargs="+", type=Path, metavar="IMAGE", help="image files (any format PIL reads)"
    )
    parser.add_argument(
        "--out-dir", required=True, type=Path, help="folder for the overlays and results.json"
    )
    parser.add_argument(
        "--score-thresh", type=float, default=0.5, help="keep detections with score >= this (default 0.5)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"skip images with more than this many pixels, width*height (default {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument(
        "--device", default="auto", help="'auto' (GPU when there is one), 'cpu', 'cuda', 'cuda:1' ..."
    )
    parser.add_argument(
        "--ann", type=Path, help="COCO annotation file whose image ids the results should use"
    )
    parser.add_argument(
        "--results-name", default="results.json", help="name of the results file in --out-dir"
    )
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses bad values through ``parser.error`` (exit 2, usage line)."""
    if not 0.0 <= args.score_thresh <= 1.0:
        parser.error(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_pixels < 1:
        parser.error(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if "/" in args.results_name or not args.results_name:
        parser.error(f"--results-name must be a plain file name, got {args.results_name!r}")
    for path in args.images:
        if path.is_dir():
            parser.error(f"IMAGE {path}: is a folder, expected an image file")
        if not path.exists():
            parser.error(f"IMAGE {path}: no such file")
    try:
        args.device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    """Returns 0 when every image was predicted, 1 when some were skipped (the others are written), 2 on
    an error that stops the run."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    try:
        image_ids = image_ids_from_annotations(args.images, args.ann) if args.ann is not None else None
        report = predict_files(
            args.checkpoint,
            args.images,
            args.out_dir,
            score_thresh=args.score_thresh,
            batch_size=args.batch_size,
            max_pixels=args.max_pixels,
            device=args.device,
            image_ids=image_ids,
            results_name=args.results_name,
        )
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report.skipped:
        done = len(args.images) - len(report.skipped)
        written = f"the other {done} are in {args.out_dir}" if done else "no image could be predicted"
        print(
            f"error: {len(report.skipped)} of {len(args.images)} images skipped (listed above); {written}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
