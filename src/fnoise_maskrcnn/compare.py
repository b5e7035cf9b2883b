"""Does F-Noise change how Mask R-CNN learns? Side-by-side comparison of training runs over seeds.

Compare finished (or running) runs::

    python -m fnoise_maskrcnn.compare runs/a runs/b ... --out comparison.png

or train both arms for several seeds and compare them, in one command::

    python -m fnoise_maskrcnn.compare --train --seeds 0 1 2 [training flags]

Writes the figure (``<out>.png``) and the summary (``<out>.md``, ``<out>.json``). The command's flags and
``main``; the library is :mod:`fnoise_maskrcnn.study` (grouping runs into arms, the statistics over seeds,
the report, the figure, training the arms).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .study.arms import (
    STUDY_TRAIN_FLAGS,
    ArmSpec,
    parse_sweep,
    plan_seeds,
    study_arms,
    study_flags_error,
    train_arms,
)
from .study.comparison import load_arms, write_comparison
from .study.runs import DEFAULT_IGNORED_KEYS, RunError

__all__ = ["main"]


def _build_parser(train_mode: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fnoise_maskrcnn.compare",
        allow_abbrev=False,
        description=(
            "Compare training runs with and without F-Noise, side by side over seeds: a figure (one "
            "panel per arm, shared y axes, mean ± std bands) and a summary (<out>.md, <out>.json): per arm "
            "the peak and final validation APs, the minimum validation loss and the validation − training "
            "gap of complete runs as mean ± std, the F-Noise − baseline differences with 95% intervals, the "
            "runs in progress and the compute. "
            "With --train, first train both arms for each seed; every flag compare does not know is "
            "passed to `python -m fnoise_maskrcnn.train`, after compare's study defaults ("
            + " ".join(STUDY_TRAIN_FLAGS)
            + "), which --no-study-defaults leaves out."
        ),
    )
    if not train_mode:
        parser.add_argument("runs", nargs="*", type=Path, metavar="RUN_DIR", help="run directories of train")
    parser.add_argument(
        "--out", type=Path, help="output PNG (default with --train: OUTPUT_DIR/comparison.png)"
    )
    parser.add_argument(
        "--smooth", type=int, metavar="N", help="moving-average window of the iteration curves"
    )
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument(
        "--ignore-key",
        action="append",
        default=[],
        metavar="KEY",
        help="config.json key that does not define an arm (always ignored: "
        + ", ".join(DEFAULT_IGNORED_KEYS)
        + ")",
    )
    _add_study_flags(parser)
    return parser


def _add_study_flags(parser: argparse.ArgumentParser) -> None:
    """``--train`` and what the study trains: seeds, sweeps, jobs, devices, its directory."""
    study = parser.add_argument_group("training both arms")
    study.add_argument(
        "--train", action="store_true", help="train the baseline and F-Noise arms, then compare"
    )
    study.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to train (default: 0 1 2)"
    )
    study.add_argument(
        "--sweep",
        action="append",
        type=parse_sweep,
        default=[],
        metavar="KEY=V1,V2,...",
        help="an F-Noise arm per value of a train flag (repeatable: a grid), e.g. f_noise_std=0.05,0.1,0.2 "
        "or f_noise_preset=deepmirror-uniform; without --sweep: one arm with --f-noise",
    )
    study.add_argument("--no-baseline", action="store_true", help="train no baseline arm")
    study.add_argument("--jobs", type=int, default=1, help="trainings at once (default 1)")
    study.add_argument(
        "--devices",
        nargs="+",
        metavar="DEVICE",
        default=[],
        help="devices handed to the jobs in turn, e.g. cuda:0 cuda:1 (default: train's choice)",
    )
    study.add_argument(
        "--no-study-defaults",
        action="store_true",
        help="pass only your own training flags (the study defaults: " + " ".join(STUDY_TRAIN_FLAGS) + ")",
    )
    study.add_argument(
        "--output-dir",
        type=Path,
        default=Path("runs/fnoise-study"),
        help="study directory: runs in OUTPUT_DIR/<arm>/seed<S> (default: runs/fnoise-study); running the "
        "same command again keeps finished runs and resumes interrupted ones",
    )


def _check_train_flags(
    parser: argparse.ArgumentParser, defaults: Sequence[str], flags: Sequence[str], arms: Sequence[ArmSpec]
) -> None:
    """Rejects flags compare sets itself, and lets train's parser check every arm's flags before anything
    runs."""
    from .arguments import build_parser as build_train_parser

    train_parser = build_train_parser()
    known = [action.dest for action in train_parser._actions]  # argparse has no public list
    error = study_flags_error(flags, arms, known)
    if error is not None:
        parser.error(error)
    for _, arm_flags in arms:
        train_parser.parse_args([*defaults, *flags, *arm_flags, "--seed", "0"])


def _precision_here(args: argparse.Namespace, train_flags: Sequence[str]) -> str:
    """What ``--amp`` of the study's training flags resolves to on this machine (first of ``--devices``)."""
    from .arguments import parse as parse_train_flags
    from .device import resolve_device
    from .engine.state import amp_precision

    config = parse_train_flags([*train_flags, "--seed", "0"]).config
    device = resolve_device(args.devices[0] if args.devices else config.run.device)
    return amp_precision(device, config.optim.amp)


def _train_study(
    parser: argparse.ArgumentParser, args: argparse.Namespace, train_flags: list[str]
) -> tuple[Path, list[Path], str | None]:
    """``--train``: check the study flags, train every arm and seed; return the PNG path, the runs, and
    what was left untrained here (None when nothing was).

    Raises:
        RuntimeError: a training run failed (from :func:`train_arms`).
    """
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {' '.join(map(str, args.seeds))}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    keys = [key for key, _ in args.sweep]
    if len(set(keys)) != len(keys):
        parser.error(f"--sweep: each key once, got {' '.join(keys)}")
    arms = study_arms(args.sweep, baseline=not args.no_baseline)
    defaults = () if args.no_study_defaults else STUDY_TRAIN_FLAGS
    _check_train_flags(parser, defaults, train_flags, arms)
    try:
        plans = plan_seeds(
            args.output_dir, arms, args.seeds, _precision_here(args, [*defaults, *train_flags])
        )
    except RunError as exc:
        raise RuntimeError(str(exc)) from None
    run_dirs = train_arms(
        args.seeds,
        args.output_dir,
        train_flags,
        defaults=defaults,
        arms=arms,
        jobs=args.jobs,
        devices=args.devices,
        plans=plans,
    )
    left = [seed for seed, plan in plans.items() if plan.skip is not None]
    incomplete = (
        f"seed(s) {' '.join(map(str, left))} left untrained here ({plans[left[0]].skip}); run the same "
        "command where --amp gives that precision"
        if left
        else None
    )
    return args.out or args.output_dir / "comparison.png", run_dirs, incomplete


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_mode = "--train" in argv
    parser = _build_parser(train_mode)
    if train_mode:
        args, train_flags = parser.parse_known_args(argv)
        try:
            out, run_dirs, incomplete = _train_study(parser, args, train_flags)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        args = parser.parse_args(argv)
        if not args.runs:
            parser.error("give run directories to compare, or --train to train both arms first")
        if args.out is None:
            parser.error("--out is required (the comparison PNG)")
        out, run_dirs, incomplete = args.out, args.runs, None
    if out.suffix.lower() != ".png":
        parser.error(f"--out {out}: must be a .png file")
    if args.smooth is not None and args.smooth < 1:
        parser.error(f"--smooth must be >= 1, got {args.smooth}")
    try:
        arms = load_arms(run_dirs, (*DEFAULT_IGNORED_KEYS, *args.ignore_key))
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(write_comparison(arms, out, smoothing=args.smooth, title=args.title))
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.json')}")
    if incomplete is not None:
        print(f"incomplete: {incomplete}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
