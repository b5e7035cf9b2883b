"""How much of a paired AP difference is the validation set's sampling noise?

    python references/fnoise/validation_noise.py --ann VAL.json --chunk 64 \
        --results base.json fnoise.json --names baseline "sigma=0.05" --out validation_noise.json

Each ``--results`` file is a COCO results JSON of one model on the images of ``VAL.json`` (written by
``python -m fnoise_maskrcnn.evaluate ... --results FILE``); the first is the reference. The image ids of
``VAL.json`` are split, in id order, into disjoint chunks of ``--chunk`` images (a last, smaller chunk is
dropped), and every model is scored on the whole set and on each chunk. For each model after the first,
the paired difference from the first (same images) is given on the whole set and per chunk: the std of
the per-chunk differences is how much the difference of these two fixed models moves from one
validation set of ``--chunk`` images to another. A multi-seed study on a validation set of that size
sees this noise on top of the seed-to-seed noise of training.

Prints a markdown table; ``--out`` also writes every number as JSON. APs are in AP points (x100).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from fnoise_maskrcnn.evaluation import evaluate_coco, load_coco_results, load_ground_truth
from fnoise_maskrcnn.study import describe

IOU_TYPES = ("segm", "bbox")


def chunks(image_ids: Sequence[int], size: int) -> list[list[int]]:
    """``image_ids`` sorted and split into consecutive chunks of ``size`` (a last, smaller one dropped)."""
    ordered = sorted(image_ids)
    return [ordered[i : i + size] for i in range(0, len(ordered) - size + 1, size)]


def scores(gt: COCO, results: Sequence[Mapping[str, Any]], image_sets: Sequence[Sequence[int]]) -> dict:
    """AP points of ``results`` per IoU type on each image set: ``{"segm": [AP, ...], "bbox": [...]}``."""
    out: dict[str, list[float]] = {iou: [] for iou in IOU_TYPES}
    for image_ids in image_sets:
        with contextlib.redirect_stdout(io.StringIO()):
            metrics = evaluate_coco(gt, results, img_ids=image_ids, iou_types=IOU_TYPES)
        for iou in IOU_TYPES:
            out[iou].append(100.0 * metrics[iou]["AP"])
    return out


def _over_chunks(values: Sequence[float]) -> dict[str, Any]:
    """``values`` (one per chunk) with their mean and sample std."""
    stat = describe(values)
    return {"per_chunk": list(values), "chunk_mean": stat.mean, "chunk_std": stat.std}


def analyse(gt: COCO, named_results: Mapping[str, Sequence[Mapping[str, Any]]], chunk: int) -> dict:
    """Every model's AP on the whole set and per chunk, and each later model's paired difference from the
    first: on the whole set, per chunk, and the chunks' mean and std (AP points)."""
    all_ids = sorted(gt.getImgIds())
    parts = chunks(all_ids, chunk)
    if not parts:
        raise ValueError(f"--chunk {chunk} is larger than the set's {len(all_ids)} images")
    models = {name: scores(gt, res, [all_ids, *parts]) for name, res in named_results.items()}
    reference = next(iter(models))
    report: dict[str, Any] = {"images": len(all_ids), "chunk": chunk, "chunks": len(parts), "models": {}}
    for name, ap in models.items():
        entry: dict[str, Any] = {}
        for iou in IOU_TYPES:
            per_chunk = ap[iou][1:]
            entry[iou] = {"whole_set": ap[iou][0], **_over_chunks(per_chunk)}
            if name != reference:
                diffs = [a - b for a, b in zip(per_chunk, models[reference][iou][1:])]
                entry[iou]["difference"] = {
                    "whole_set": ap[iou][0] - models[reference][iou][0],
                    **_over_chunks(diffs),
                }
        report["models"][name] = entry
    report["reference"] = reference
    return report


def markdown(report: Mapping[str, Any]) -> str:
    """The report as a markdown table, one row per model and IoU type."""
    lines = [
        f"{report['images']} images; {report['chunks']} disjoint chunks of {report['chunk']} "
        f"(AP points; differences from {report['reference']}, paired on the same images)",
        "",
        "| model | AP | whole set | chunks: mean ± std | difference, whole set | difference, chunks: "
        "mean ± std |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in report["models"].items():
        for iou in IOU_TYPES:
            e = entry[iou]
            row = f"| {name} | {iou} | {e['whole_set']:.1f} | {e['chunk_mean']:.1f} ± {e['chunk_std']:.1f} |"
            d = e.get("difference")
            row += (
                f" {d['whole_set']:+.1f} | {d['chunk_mean']:+.1f} ± {d['chunk_std']:.1f} |" if d else " | |"
            )
            lines.append(row)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ann", required=True, type=Path, help="COCO instances JSON of the validation set")
    parser.add_argument(
        "--results", required=True, nargs="+", type=Path, help="COCO results JSON files, the reference first"
    )
    parser.add_argument("--names", nargs="+", help="a name per results file (default: the file stems)")
    parser.add_argument("--chunk", type=int, default=64, help="images per chunk (default 64)")
    parser.add_argument("--out", type=Path, help="also write the numbers here as JSON")
    args = parser.parse_args(argv)
    if args.chunk < 1:
        parser.error(f"--chunk must be >= 1, got {args.chunk}")
    if len(args.results) < 2:
        parser.error("--results needs the reference and at least one more model")
    names = args.names or [path.stem for path in args.results]
    if len(names) != len(args.results) or len(set(names)) != len(names):
        parser.error(f"--names needs {len(args.results)} different names, one per --results file")
    try:
        gt = load_ground_truth(args.ann)
        image_ids = gt.getImgIds()
        named = {
            name: load_coco_results(path, image_ids, str(args.ann)) for name, path in zip(names, args.results)
        }
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = analyse(gt, named, args.chunk)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
