"""Do the study's paired AP differences hold when COCO counts more than 100 detections per image?

    python references/fnoise/max_dets.py --ann VAL.json --results DIR/*.json --max-dets 100 300 \
        --out max_dets.json

COCO's AP ranks each image's detections by score and counts the first ``maxDets`` (100). On a set with
more objects than that in an image (the nuclei validation set has three images with 205-249), the
objects beyond it can never be matched, so recall and AP have a ceiling under 1. This scores the same
detections at each ``--max-dets`` and repeats the study's comparison at each: per arm, segm and bbox AP
as mean ± std over seeds; per F-Noise arm, the difference from the reference arm paired by seed with its
95% t interval, p, and p Holm-adjusted over the F-Noise arms (per metric and ``--max-dets``).

Each ``--results`` file is a COCO results JSON (``python -m fnoise_maskrcnn.evaluate ... --results``) named
``<arm>-seed<S>.json``. The recall ceiling printed per ``--max-dets`` is the share of the ground-truth
objects that fit in their images' first ``maxDets`` detections. APs are in AP points (x100).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from fnoise_maskrcnn.evaluation import ap_at_max_dets, load_coco_results, load_ground_truth
from fnoise_maskrcnn.study import common_seed_difference, describe, holm

IOU_TYPES = ("segm", "bbox")
NAME = re.compile(r"^(?P<arm>.+)-seed(?P<seed>\d+)$")


def coco_aps(
    gt: COCO, results: Sequence[Mapping[str, Any]], iou_type: str, max_dets: Sequence[int]
) -> dict[int, float]:
    """COCO AP (IoU 0.5:0.95, all areas) of ``results`` counting each image's ``m`` best detections, for
    each ``m`` of ``max_dets``, in AP points: one evaluation (IoUs matched once), accumulated per limit."""
    return {m: 100.0 * ap for m, ap in ap_at_max_dets(gt, results, iou_type, max_dets).items()}


def recall_ceiling(gt: COCO, max_dets: int) -> float:
    """The share of non-crowd ground-truth objects that fit in their image's first ``max_dets``."""
    counts = np.array([len(gt.getAnnIds(imgIds=[i], iscrowd=False)) for i in gt.getImgIds()])
    return float(np.minimum(counts, max_dets).sum() / max(counts.sum(), 1))


def parse_name(path: Path) -> tuple[str, int]:
    """``(arm, seed)`` of a file named ``<arm>-seed<S>.json``."""
    match = NAME.match(path.stem)
    if match is None:
        raise ValueError(f"{path}: name it <arm>-seed<S>.json")
    return match["arm"], int(match["seed"])


def analyse(
    gt: COCO,
    files: Mapping[tuple[str, int], Sequence[Mapping[str, Any]]],
    max_dets: Sequence[int],
    reference: str,
) -> dict[str, Any]:
    """Every arm's APs at each ``max_dets`` and each other arm's paired difference from ``reference``."""
    arms = sorted({arm for arm, _ in files}, key=lambda a: (a != reference, a))
    if reference not in arms:
        raise ValueError(f"no results of the reference arm {reference!r}")
    aps = {
        (run, iou): coco_aps(gt, results, iou, max_dets)
        for run, results in files.items()
        for iou in IOU_TYPES
    }
    report: dict[str, Any] = {"reference": reference, "by_max_dets": {}}
    for m in max_dets:
        entry: dict[str, Any] = {"recall_ceiling": recall_ceiling(gt, m), "arms": {}, "differences": []}
        for iou in IOU_TYPES:
            stats = {}
            for arm in arms:
                seeds = sorted(s for a, s in files if a == arm)
                stats[arm] = describe([aps[(arm, s), iou][m] for s in seeds], seeds)
                entry["arms"].setdefault(arm, {})[iou] = dataclasses.asdict(stats[arm])
            diffs = [(arm, common_seed_difference(stats[arm], stats[reference])) for arm in arms[1:]]
            adjusted = holm([d.p if d.p is not None else 1.0 for _, d in diffs])
            for (arm, d), p_holm in zip(diffs, adjusted):
                entry["differences"].append(
                    {"arm": arm, "metric": iou, **dataclasses.asdict(d), "p_holm": p_holm}
                )
        report["by_max_dets"][str(m)] = entry
    return report


def markdown(report: Mapping[str, Any]) -> str:
    """One row per ``max_dets``, F-Noise arm and AP type: the arm's AP, the reference's, the difference."""
    lines = [
        f"AP points, mean ± std over seeds; differences from {report['reference']} paired by seed "
        "(95% t interval; p; Holm over the F-Noise arms)",
        "",
        "| maxDets | recall ceiling | arm | AP | arm's AP | reference's AP | difference [95% CI] | p "
        "| Holm p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, entry in report["by_max_dets"].items():
        for d in entry["differences"]:
            arm, ref = entry["arms"][d["arm"]][d["metric"]], entry["arms"][report["reference"]][d["metric"]]
            ci = "n/a" if d["ci95"] is None else f"[{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]"
            p = "n/a" if d["p"] is None else f"{d['p']:.3f}"
            lines.append(
                f"| {m} | {entry['recall_ceiling']:.3f} | {d['arm']} | {d['metric']} | {_pm(arm)} | "
                f"{_pm(ref)} | {d['mean']:+.1f} {ci} | {p} | {d['p_holm']:.3f} |"
            )
    return "\n".join(lines + [""] + _per_run_markdown(report))


def _pm(stat: Mapping[str, Any]) -> str:
    """Mean ± std in AP points; the mean alone for one seed."""
    return f"{stat['mean']:.1f}" if stat["std"] is None else f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def _per_run_markdown(report: Mapping[str, Any]) -> list[str]:
    """One row per run (arm and seed): its AP at each ``max_dets``."""
    by_m = report["by_max_dets"]
    columns = [(m, iou) for iou in IOU_TYPES for m in by_m]
    lines = [
        "| arm | seed | " + " | ".join(f"{iou} AP, maxDets {m}" for m, iou in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    first = next(iter(by_m.values()))
    for arm, per_iou in first["arms"].items():
        for k, seed in enumerate(per_iou["segm"]["seeds"]):
            cells = [f"{by_m[m]['arms'][arm][iou]['values'][k]:.1f}" for m, iou in columns]
            lines.append(f"| {arm} | {seed} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ann", required=True, type=Path, help="COCO instances JSON of the validation set")
    parser.add_argument("--results", required=True, nargs="+", type=Path, help="<arm>-seed<S>.json files")
    parser.add_argument("--max-dets", nargs="+", type=int, default=[100, 300], help="default: 100 300")
    parser.add_argument("--reference", default="baseline", help="the arm differences are taken from")
    parser.add_argument("--out", type=Path, help="also write the numbers here as JSON")
    args = parser.parse_args(argv)
    if any(m < 1 for m in args.max_dets):
        parser.error(f"--max-dets must be >= 1, got {args.max_dets}")
    try:
        gt = load_ground_truth(args.ann)
        image_ids = gt.getImgIds()
        files = {}
        for path in args.results:
            files[parse_name(path)] = load_coco_results(path, image_ids, str(args.ann))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = analyse(gt, files, args.max_dets, args.reference)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
