"""Draw a trained model's predictions on images and write them as COCO results.

Command line::

    python -m fnoise_maskrcnn.predict --checkpoint CKPT IMAGE... --out-dir DIR [--score-thresh 0.5]

writes ``DIR/<image stem>.png`` (the image with masks, boxes and "name score" labels) for each image
and ``DIR/results.json``: COCO results entries (``image_id``, original ``category_id``, ``bbox`` XYWH,
``score``, RLE ``segmentation``) plus the ``file_name`` of the image. Image ids are the images'
positions on the command line (1-based) or, with ``--ann``, their ids in a COCO annotation file, so
the file can be scored with pycocotools directly.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from .atomic import write_bytes_atomic
from .checkpoint import CheckpointError, model_from_checkpoint
from .coco_eval import predictions_to_coco_results
from .inference import (
    ImageError,
    draw_overlay,
    png_bytes,
    predict_batch,
    read_image,
    resolve_device,
)

__all__ = ["main", "output_names", "image_ids_from_annotations"]


def output_names(images: Sequence[Path]) -> list[str]:
    """Overlay file names: ``<stem>.png``, with ``-<position>`` appended where stems collide."""
    stems = [p.stem for p in images]
    duplicated = {s for s in stems if stems.count(s) > 1}
    return [f"{s}-{i + 1}.png" if s in duplicated else f"{s}.png" for i, s in enumerate(stems)]


def image_ids_from_annotations(images: Sequence[Path], ann_file: Path) -> list[int]:
    """The id of each image in a COCO annotation file, matched on the file name (without folders).

    Raises:
        ValueError: the file is unreadable, or an image is not listed in it (one-line message).
    """
    try:
        data = json.loads(ann_file.read_text())
        by_name = {Path(img["file_name"]).name: int(img["id"]) for img in data["images"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{ann_file}: not a readable COCO annotation file ({exc.__class__.__name__}: {exc})"
        ) from exc
    missing = [p for p in images if p.name not in by_name]
    if missing:
        raise ValueError(f"{missing[0]}: no image of that file name in {ann_file}")
    return [by_name[p.name] for p in images]


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
        "--device", default="auto", help="'auto' (GPU when there is one), 'cpu', 'cuda', 'cuda:1' ..."
    )
    parser.add_argument(
        "--ann", type=Path, help="COCO annotation file whose image ids the results should use"
    )
    parser.add_argument(
        "--results-name", default="results.json", help="name of the results file in --out-dir"
    )
    return parser


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run(
    checkpoint: Path,
    images: Sequence[Path],
    out_dir: Path,
    *,
    score_thresh: float = 0.5,
    batch_size: int = 4,
    device: str | None = "auto",
    image_ids: Sequence[int] | None = None,
    results_name: str = "results.json",
) -> list[dict[str, Any]]:
    """Predicts on ``images`` and writes overlays and the results file; returns the results entries.

    Images are decoded in a background thread one batch ahead of the model.
    """
    torch_device = resolve_device(device)
    model, ckpt = model_from_checkpoint(checkpoint, device=torch_device)
    categories = ckpt["categories"]
    image_ids = list(image_ids) if image_ids is not None else list(range(1, len(images) + 1))
    names = output_names(images)
    out_dir.mkdir(parents=True, exist_ok=True)

    results: list[dict[str, Any]] = []
    batches = _batches(list(range(len(images))), batch_size)

    def decode(indices: Sequence[int]) -> list[torch.Tensor]:
        return [read_image(images[i]) for i in indices]

    with ThreadPoolExecutor(max_workers=1) as decoder:
        pending = decoder.submit(decode, batches[0])
        for b, indices in enumerate(batches):
            pixels = pending.result()
            if b + 1 < len(batches):
                pending = decoder.submit(decode, batches[b + 1])
            outputs = predict_batch(model, pixels, score_thresh, torch_device)
            for i, image, output in zip(indices, pixels, outputs):
                write_bytes_atomic(png_bytes(draw_overlay(image, output, categories)), out_dir / names[i])
                entries = predictions_to_coco_results([output], [image_ids[i]], categories)
                for entry in entries:
                    entry["file_name"] = images[i].name
                results.extend(entries)
                print(f"{images[i]}: {len(output['scores'])} instances -> {out_dir / names[i]}")
    write_bytes_atomic(json.dumps(results).encode(), out_dir / results_name)
    print(f"{len(results)} results from {len(images)} images -> {out_dir / results_name}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.score_thresh <= 1.0:
        parser.error(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if "/" in args.results_name or not args.results_name:
        parser.error(f"--results-name must be a plain file name, got {args.results_name!r}")
    missing = [p for p in args.images if not p.is_file()]
    if missing:
        parser.error(f"IMAGE {missing[0]}: no such file")
    try:
        image_ids = image_ids_from_annotations(args.images, args.ann) if args.ann is not None else None
        run(
            args.checkpoint,
            args.images,
            args.out_dir,
            score_thresh=args.score_thresh,
            batch_size=args.batch_size,
            device=args.device,
            image_ids=image_ids,
            results_name=args.results_name,
        )
    except (CheckpointError, ImageError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
