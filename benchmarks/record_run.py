"""Record a finished training run's learning curve as a benchmark result.

Reads ``config.json`` and ``metrics.jsonl`` of a ``python -m fnoise_maskrcnn.train`` run and writes
``benchmarks/results/<date>-<name>.json``: the command's settings, and per evaluated epoch the iterations,
cumulative training and wall time (training + evaluation), validation loss and bbox/segm AP, with the peak
and the final values. Nothing is typed by hand: the figures come from the run's own files::

    python benchmarks/record_run.py runs/balloon --name cpu_scratch_balloon \\
        --command "python -m fnoise_maskrcnn.train --data-path DATA/balloon --recipe cpu-scratch --f-noise"
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _results import write_result

#: The sections of ``config.json`` (``TrainConfig.to_dict()``) kept beside the curve.
CONFIG_SECTIONS = ("data", "model", "optim", "run")

#: Entries that name this machine's files or choices rather than the experiment (the command names the
#: data): per section.
MACHINE_ENTRIES = {
    "data": ("data_path", "train_ann", "train_images", "val_ann", "val_images", "workers"),
    "run": ("output_dir", "resume", "device", "threads", "cpu_allocator"),
}


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """The run's resolved settings from its ``config.json``: the ``data``, ``model``, ``optim`` and ``run``
    sections, without the run's own paths and machine choices (:data:`MACHINE_ENTRIES`).

    Raises:
        ValueError: ``config`` lacks those sections (not a ``config.json`` of ``fnoise_maskrcnn.train``).
    """
    missing = [name for name in CONFIG_SECTIONS if not isinstance(config.get(name), dict)]
    if missing:
        raise ValueError(
            f"no {', '.join(missing)} section in config.json; not written by fnoise_maskrcnn.train"
        )
    kept = {name: dict(config[name]) for name in CONFIG_SECTIONS}
    for name, entries in MACHINE_ENTRIES.items():
        for entry in entries:
            kept[name].pop(entry, None)
    return kept


def learning_curve(run_dir: Path) -> list[dict[str, Any]]:
    """Per evaluated epoch: epoch (1-based), iterations, train/wall seconds so far, val loss, bbox/segm AP."""
    points, train_s, wall_s = [], 0.0, 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("type") != "epoch":
            continue
        train_s += record["train_time"]
        wall_s += record["train_time"] + (record.get("eval_time") or 0.0)
        if record.get("segm"):
            points.append(
                {
                    "epoch": record["epoch"] + 1,
                    "iterations": record["iteration"],
                    "train_seconds": round(train_s, 1),
                    "wall_seconds": round(wall_s, 1),
                    "train_loss": round(record["train"]["loss"], 4),
                    "val_loss": round(record["val"]["loss"], 4),
                    "bbox_ap": round(record["bbox"]["AP"], 4),
                    "segm_ap": round(record["segm"]["AP"], 4),
                }
            )
    return points


def summary(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The peak and final segm AP (with where they were reached)."""
    if not points:
        return {"peak": None, "final": None}
    peak = max(points, key=lambda p: p["segm_ap"])
    return {"peak": peak, "final": points[-1]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the run's --output-dir")
    parser.add_argument(
        "--name", required=True, help="result name (file: benchmarks/results/<date>-<name>.json)"
    )
    parser.add_argument("--command", required=True, help="the command that trained the run, to reproduce it")
    parser.add_argument(
        "--note", default="", help="anything a reader needs to know (e.g. the machine was busy)"
    )
    args = parser.parse_args(argv)
    for name in ("config.json", "metrics.jsonl"):
        if not (args.run_dir / name).is_file():
            parser.error(f"{args.run_dir}: no {name}; not a training run directory")
    try:
        resolved = settings(json.loads((args.run_dir / "config.json").read_text()))
    except ValueError as exc:
        parser.error(f"{args.run_dir / 'config.json'}: {exc}")
    points = learning_curve(args.run_dir)
    result = {
        "command": args.command,
        "settings": resolved,
        "curve": points,
        **summary(points),
        "note": args.note,
    }
    print(json.dumps(result, indent=2))
    print(f"wrote {write_result(args.name, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
