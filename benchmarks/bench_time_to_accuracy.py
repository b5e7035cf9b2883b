"""Time to accuracy on the synthetic set, after MLPerf Training's Mask R-CNN metric (time to a target AP).

Trains the ``synthetic`` recipe and torchvision's reference defaults (BatchNorm, default RoI heads, its lr
rule and 1000-iteration warmup; at the recipe's image size, so that only the recipe differs) on the same
synthetic data, one after the other in one run, evaluating after every epoch. It reports, per arm, the
validation AP after each epoch and the training time, wall time (training + evaluation) and iterations at
which segm AP first reached each target level, then writes
``benchmarks/results/<date>-time_to_accuracy.json``.

Runs are kept in ``--work-dir``: a run that was interrupted is resumed (``train --resume``), a finished one
is read back, so the benchmark can be stopped and started again::

    python benchmarks/bench_time_to_accuracy.py --epochs 9 --torchvision-epochs 3 --work-dir runs/tta
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _results import write_result
from fnoise_maskrcnn.study.runs import epoch_records
from record_run import learning_curve

ARMS: dict[str, list[str]] = {
    "recipe": ["--recipe", "synthetic"],
    "torchvision": [
        "--recipe",
        "torchvision",
        "--min-size",
        "160",
        "--max-size",
        "160",
        "--synthetic-images",
        "400",
    ],
}


def train_arm(name: str, run_dir: Path, epochs: int, extra: Sequence[str]) -> None:
    """Runs (or resumes, or skips) one arm's training in a subprocess."""
    if len(epoch_records(run_dir)) >= epochs:
        return
    argv = [
        sys.executable,
        "-m",
        "fnoise_maskrcnn.train",
        *ARMS[name],
        "--epochs",
        str(epochs),
        "--output-dir",
        str(run_dir),
        *extra,
    ]
    if (run_dir / "last.pth").is_file():
        argv.append("--resume")
    print("$ " + " ".join(argv[1:]), flush=True)
    subprocess.run(argv, check=True)


def time_to(points: Sequence[dict[str, Any]], level: float) -> dict[str, Any] | None:
    """The first evaluation at which segm AP >= ``level``, or None if never."""
    for point in points:
        if point["segm_ap"] >= level:
            return {k: point[k] for k in ("epoch", "iterations", "train_seconds", "wall_seconds", "segm_ap")}
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs",
        type=int,
        default=9,
        help="epochs of the recipe arm (400 images, 100 iterations each; 3 is the quick start)",
    )
    parser.add_argument(
        "--torchvision-epochs",
        type=int,
        default=3,
        help="epochs of the torchvision arm (400 images, 200 iterations each at its batch of 2)",
    )
    parser.add_argument("--levels", type=float, nargs="+", default=[0.1, 0.25, 0.5], help="segm AP targets")
    parser.add_argument("--arms", nargs="+", choices=tuple(ARMS), default=list(ARMS), help="arms to run")
    parser.add_argument(
        "--work-dir", type=Path, default=Path("runs/time_to_accuracy"), help="where runs are kept"
    )
    parser.add_argument(
        "--train-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every training (repeatable), e.g. --train-arg=--threads=2",
    )
    parser.add_argument(
        "--note", default="", help="conditions a reader needs to know (e.g. a shared machine)"
    )
    parser.add_argument("--no-write", action="store_true", help="print the result only")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.torchvision_epochs < 1:
        parser.error("--epochs and --torchvision-epochs must be >= 1")

    result: dict[str, Any] = {"epochs": args.epochs, "levels": args.levels, "note": args.note, "arms": {}}
    for name in args.arms:
        run_dir = args.work_dir / name
        epochs = args.epochs if name == "recipe" else args.torchvision_epochs
        train_arm(name, run_dir, epochs, ["--f-noise", *args.train_arg])
        points = learning_curve(run_dir)
        config = json.loads((run_dir / "config.json").read_text())
        result["arms"][name] = {
            "command": "python -m fnoise_maskrcnn.train "
            + " ".join([*ARMS[name], "--f-noise", "--epochs", str(epochs)]),
            "norm": config["model_config"].get("norm"),
            "batch_size": config["batch_size"],
            "lr": config["lr"],
            "curve": points,
            "time_to": {str(level): time_to(points, level) for level in args.levels},
        }
    print(json.dumps(result, indent=2))
    if not args.no_write:
        print(f"wrote {write_result('time_to_accuracy', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
