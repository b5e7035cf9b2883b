"""Does F-Noise change how Mask R-CNN learns? Side-by-side comparison of training runs over seeds.

Compare finished (or running) runs::

    python -m fnoise_maskrcnn.compare runs/a runs/b ... --out comparison.png

or train both arms for several seeds and compare them, in one command::

    python -m fnoise_maskrcnn.compare --train --seeds 0 1 2 [training flags]

Runs are grouped into arms by their ``config.json`` (see :func:`fnoise_maskrcnn.study.group_runs`);
the runs of an arm are its seeds. The figure has one column per arm plus one overlaying every arm's
mean ± std, and one row per quantity (training loss per iteration and per epoch, the five loss
components, validation loss, bbox and segm AP), with a shared y axis per row. Next to the PNG go a
Markdown and a JSON summary (``<out>.md``, ``<out>.json``): per arm the final values as mean ± std
over seeds, and per F-Noise arm the difference from its baseline with a 95% interval over seeds and
whether it is within seed noise.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .study import (
    DEFAULT_IGNORED_KEYS,
    LOSS_KEYS,
    Arm,
    Difference,
    RunError,
    Stat,
    describe,
    difference,
    epoch_series,
    final_epoch,
    final_values,
    group_runs,
    iteration_series,
    load_run,
    smooth,
)
from .atomic import write_text_atomic
from .visualize import save_figure

__all__ = [
    "SUMMARY_METRICS",
    "STUDY_TRAIN_FLAGS",
    "summarize",
    "summary_markdown",
    "plot_comparison",
    "train_arms",
    "main",
]

#: ``(name in the summary, dotted key of the epoch records, column title)``.
SUMMARY_METRICS = (
    ("train_loss", "train.loss", "final training loss"),
    ("val_loss", "val.loss", "validation loss"),
    ("bbox_AP", "bbox.AP", "bbox AP"),
    ("segm_AP", "segm.AP", "segm AP"),
)

#: ``(kind, key, title)`` of the figure's rows; ``kind`` is ``"iter"`` or ``"epoch"``.
PANELS = (
    ("iter", "loss", "training loss per iteration"),
    ("epoch", "train.loss", "training loss, epoch mean"),
    *(("iter", key, f"{key} per iteration") for key in LOSS_KEYS[1:]),
    ("epoch", "val.loss", "validation loss (F-Noise off)"),
    ("epoch", "bbox.AP", "bbox AP (val)"),
    ("epoch", "segm.AP", "segm AP (val)"),
)

#: Training flags of ``--train`` before the user's own (which override them): the smallest study that
#: still shows learning curves (24 iterations per run). At 128 px the RoI heads dominate a CPU step, so
#: the heads sample fewer RoIs and proposals than torchvision's defaults (512 RoIs per image, 2000/1000
#: proposals). One run takes about 67 s on an idle 2-core CPU, the 3 seeds x 2 arms about 7 minutes
#: (references/fnoise/README.md).
STUDY_TRAIN_FLAGS = (
    "--model", "mobilenet_v3",
    "--min-size", "128", "--max-size", "128",
    "--max-images", "16", "--max-val-images", "8",
    "--epochs", "3",
    "--warmup-iters", "8",
    "--print-freq", "1",
    "--workers", "0",
    "--model-kwarg", "box_batch_size_per_image=128",
    "--model-kwarg", "rpn_post_nms_top_n_train=500",
    "--model-kwarg", "rpn_post_nms_top_n_test=300",
    "--model-kwarg", "box_detections_per_img=50",
)  # fmt: skip

ARM_DIRS = (("baseline", False), ("fnoise", True))


# ----------------------------------------------------------------------------------------- summary
def summarize(arms: Sequence[Arm]) -> Dict[str, Any]:
    """Final values per arm (mean ± std over seeds) and each F-Noise arm's difference from its baseline.

    Final values are those of the last epoch that every run finished (so runs of different lengths
    are compared at the same point). A baseline is matched to an F-Noise arm when they agree on
    everything but the F-Noise settings.

    Returns:
        A JSON-able dict: ``{"epoch", "arms": [{"label", "key", "seeds", "runs", "metrics": {name:
        {"mean", "std", "n", "values", "seeds"} | None}}], "differences": [{"arm", "reference",
        "metric", "mean", "std", "stderr", "ci95", "paired", "n", "verdict"}]}``.
    """
    epoch = final_epoch(arms)
    stats: List[Dict[str, Optional[Stat]]] = []
    for arm in arms:
        per_metric = {}
        for name, path, _ in SUMMARY_METRICS:
            per_metric[name] = describe(*final_values(arm, path, epoch)) if epoch is not None else None
        stats.append(per_metric)

    differences = []
    for arm, arm_stats in zip(arms, stats):
        if arm.is_baseline:
            continue
        reference = _matching_baseline(arm, arms)
        if reference is None:
            continue
        reference_stats = stats[arms.index(reference)]
        for name, _, _ in SUMMARY_METRICS:
            if arm_stats[name] is None or reference_stats[name] is None:
                continue
            diff = difference(arm_stats[name], reference_stats[name])
            differences.append(
                {"arm": arm.label, "reference": reference.label, "metric": name, **_diff_dict(diff)}
            )

    return {
        "epoch": epoch,
        "arms": [
            {
                "label": arm.label,
                "key": arm.key,
                "seeds": arm.seeds,
                "runs": [str(run.path) for run in arm.runs],
                "metrics": {name: _stat_dict(stat) for name, stat in arm_stats.items()},
            }
            for arm, arm_stats in zip(arms, stats)
        ],
        "differences": differences,
    }


def _matching_baseline(arm: Arm, arms: Sequence[Arm]) -> Optional[Arm]:
    others = {k: v for k, v in arm.key.items() if not k.startswith("f_noise")}
    for candidate in arms:
        if candidate.is_baseline and {k: v for k, v in candidate.key.items() if k != "f_noise"} == others:
            return candidate
    return None


def _stat_dict(stat: Optional[Stat]) -> Optional[Dict[str, Any]]:
    if stat is None:
        return None
    return {
        "mean": stat.mean,
        "std": stat.std,
        "n": stat.n,
        "values": list(stat.values),
        "seeds": list(stat.seeds),
    }


def _diff_dict(diff: Difference) -> Dict[str, Any]:
    return {
        "mean": diff.mean,
        "std": diff.std,
        "stderr": diff.stderr,
        "ci95": None if diff.ci95 is None else list(diff.ci95),
        "paired": diff.paired,
        "n": diff.n,
        "verdict": diff.verdict,
    }


def _pm(stat: Optional[Dict[str, Any]]) -> str:
    if stat is None:
        return "n/a"
    if stat["std"] is None:
        return f"{stat['mean']:.4f}"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def summary_markdown(summary: Dict[str, Any]) -> str:
    """The summary as Markdown: a table of final values per arm, then the differences from baseline."""
    titles = {name: title for name, _, title in SUMMARY_METRICS}
    lines = ["# F-Noise comparison", ""]
    if summary["epoch"] is None:
        lines += ["Not every run has finished an epoch yet: no final values.", ""]
        return "\n".join(lines)
    lines += [
        f"Values after epoch {summary['epoch']} (the last epoch every run finished), as mean ± sample std "
        "over seeds (one seed: the value alone).",
        "",
        "| arm | seeds | " + " | ".join(titles[name] for name, _, _ in SUMMARY_METRICS) + " |",
        "|---|---|" + "---|" * len(SUMMARY_METRICS),
    ]
    for arm in summary["arms"]:
        seeds = ", ".join(str(s) for s in arm["seeds"])
        cells = [_pm(arm["metrics"][name]) for name, _, _ in SUMMARY_METRICS]
        lines.append(f"| {arm['label']} | {len(arm['seeds'])} ({seeds}) | " + " | ".join(cells) + " |")
    lines.append("")
    if summary["differences"]:
        lines += [
            "Differences from the baseline (F-Noise arm − baseline): mean ± std of the difference over "
            "seeds, "
            "95% confidence interval (Student's t), and whether the difference is within seed noise "
            "(the interval contains 0).",
            "",
            "| arm | metric | difference | 95% CI | seeds | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for diff in summary["differences"]:
            spread = "" if diff["std"] is None else f" ± {diff['std']:.4f}"
            interval = "n/a" if diff["ci95"] is None else f"[{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}]"
            pairing = "paired" if diff["paired"] else "unpaired"
            lines.append(
                f"| {diff['arm']} | {titles[diff['metric']]} | {diff['mean']:+.4f}{spread} | {interval} | "
                f"{diff['n']} {pairing} | {diff['verdict']} |"
            )
        lines.append("")
    lines += [
        "Notes: the training loss of an F-Noise arm is computed on perturbed features, so it is expected to "
        "differ from the baseline's even if the model learns the same; the validation loss and the APs are "
        "computed with F-Noise off. \"Within seed noise\" means these runs cannot tell the arms apart, not "
        "that the arms are equal.",
        "",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- plot
Curve = Tuple[np.ndarray, np.ndarray]


def _aggregate(curves: List[Curve]) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Mean and std (``ddof=1``; zeros for one curve) over curves at the x values they all have."""
    curves = [(x, y) for x, y in curves if x.size]
    if not curves:
        return None
    common = curves[0][0]
    for x, _ in curves[1:]:
        common = np.intersect1d(common, x)
    if common.size == 0:
        return None
    stacked = np.stack([y[np.searchsorted(x, common)] for x, y in curves])
    std = stacked.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(common.size)
    return common, stacked.mean(axis=0), std


def _smoothing_window(arms: Sequence[Arm], requested: Optional[int]) -> int:
    if requested is not None:
        return max(1, requested)
    lengths = [len(run.iterations) for arm in arms for run in arm.runs]
    return max(1, round(max(lengths, default=0) / 25))


def plot_comparison(arms: Sequence[Arm], *, smoothing: Optional[int] = None, title: str = "") -> Figure:
    """The comparison figure: one column per arm plus an overlay column, one row per quantity.

    Per-iteration rows show each seed's raw curve faintly and the mean of the smoothed curves (centred
    moving average over ``smoothing`` logged iterations; default: a 25th of the run) with a ± std band
    over seeds. Per-epoch rows show each seed's values as dots and the mean ± std. Each row shares its
    y axis across columns. Rows without data in any run are left out.
    """
    window = _smoothing_window(arms, smoothing)
    rows = []
    for kind, key, row_title in PANELS:
        series_of = iteration_series if kind == "iter" else epoch_series
        per_arm = [[series_of(run, key) for run in arm.runs] for arm in arms]
        if any(x.size for curves in per_arm for x, _ in curves):
            rows.append((kind, row_title, per_arm))

    columns = len(arms) + 1
    figure = Figure(figsize=(3.6 * columns, 2.3 * max(len(rows), 1) + 0.8), dpi=60, layout="constrained")
    seeds = sorted({len(arm.runs) for arm in arms})
    figure.suptitle(
        (title + "\n" if title else "")
        + f"mean ± std over seeds ({'/'.join(map(str, seeds))} per arm); "
        + f"iteration curves smoothed over {window}",
        fontsize=12,
    )
    if not rows:
        figure.text(0.5, 0.5, "no metrics logged yet", ha="center", va="center")
        return figure
    axes = figure.subplots(len(rows), columns, squeeze=False, sharey="row")
    colours = [f"C{i}" for i in range(len(arms))]
    for r, (kind, row_title, per_arm) in enumerate(rows):
        low, high = math.inf, -math.inf
        for a, (arm, curves) in enumerate(zip(arms, per_arm)):
            if kind == "iter":
                curves_drawn = [(x, smooth(y, window)) for x, y in curves]
            else:
                curves_drawn = curves
            aggregated = _aggregate(curves_drawn)
            for ax in (axes[r, a], axes[r, -1]):
                overlay = ax is axes[r, -1]
                if not overlay:
                    for x, y in curves:
                        if kind == "iter":
                            ax.plot(x, y, color=colours[a], alpha=0.18, linewidth=0.6)
                        else:
                            ax.plot(x, y, "o", color=colours[a], alpha=0.35, markersize=3)
                if aggregated is not None:
                    x, mean, std = aggregated
                    marker = "o-" if kind == "epoch" else "-"
                    ax.plot(x, mean, marker, color=colours[a], linewidth=1.6, markersize=4,
                            label=arm.label if overlay else None)
                    ax.fill_between(x, mean - std, mean + std, color=colours[a], alpha=0.25, linewidth=0)
            if aggregated is not None:
                _, mean, std = aggregated
                low, high = min(low, float((mean - std).min())), max(high, float((mean + std).max()))
            else:
                for _, y in curves_drawn:
                    if y.size:
                        low, high = min(low, float(y.min())), max(high, float(y.max()))
        if math.isfinite(low):
            margin = 0.06 * (high - low) if high > low else 0.05 * max(abs(high), 1e-3)
            axes[r, 0].set_ylim(low - margin, high + margin)
        for c in range(columns):
            ax = axes[r, c]
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=8)
            if kind == "epoch":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if r == len(rows) - 1 or rows[r + 1][0] != kind:
                ax.set_xlabel("iteration" if kind == "iter" else "epoch", fontsize=9)
        axes[r, 0].set_ylabel(row_title, fontsize=9)
    for c, arm in enumerate(arms):
        axes[0, c].set_title(f"{arm.label}\nseeds {', '.join(map(str, arm.seeds))}", fontsize=10)
    axes[0, -1].set_title("all arms, mean ± std", fontsize=10)
    axes[0, -1].legend(fontsize=7, loc="upper right")
    return figure


# ------------------------------------------------------------------------------------------- train
def train_arms(
    seeds: Sequence[int],
    output_dir: Path,
    train_flags: Sequence[str],
    *,
    defaults: Sequence[str] = STUDY_TRAIN_FLAGS,
    python: str = sys.executable,
) -> List[Path]:
    """Trains the baseline and the F-Noise arm for each seed, one ``fnoise_maskrcnn.train`` process at a time.

    Run ``(arm, seed)`` goes to ``output_dir/<baseline|fnoise>/seed<S>`` with its console output in
    ``output_dir/logs/<arm>-seed<S>.log``. Both arms get the same flags (``defaults`` then
    ``train_flags``, so the latter win) and ``--seed S``, so a seed means the same initial weights
    and data order in both; the F-Noise arm adds ``--f-noise``. Seeds are interleaved (baseline 0,
    F-Noise 0, baseline 1 ...) so that an interrupted study still holds complete pairs.

    Raises:
        RuntimeError: a training run failed (the message names its log file).
    """
    output_dir = Path(output_dir)
    logs = output_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    jobs = [(arm, f_noise, seed) for seed in seeds for arm, f_noise in ARM_DIRS]
    run_dirs = []
    for number, (arm, f_noise, seed) in enumerate(jobs, start=1):
        run_dir = output_dir / arm / f"seed{seed}"
        log = logs / f"{arm}-seed{seed}.log"
        command = [python, "-m", "fnoise_maskrcnn.train", *defaults, *train_flags,
                   "--seed", str(seed), "--output-dir", str(run_dir), *(["--f-noise"] if f_noise else [])]
        print(f"[{number}/{len(jobs)}] {arm} seed {seed} -> {run_dir} (log: {log})", flush=True)
        start = time.perf_counter()
        with open(log, "w") as log_file:
            log_file.write(" ".join(command) + "\n")
            log_file.flush()
            code = subprocess.call(command, stdout=log_file, stderr=subprocess.STDOUT)
        if code != 0:
            tail = [line for line in log.read_text().splitlines() if line.strip()][-1:]
            raise RuntimeError(f"training {arm} seed {seed} failed (exit {code}; see {log}): {''.join(tail)}")
        print(f"    done in {time.perf_counter() - start:.0f} s", flush=True)
        run_dirs.append(run_dir)
    return run_dirs


# ------------------------------------------------------------------------------------------- CLI
def _build_parser(train_mode: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fnoise_maskrcnn.compare",
        allow_abbrev=False,
        description=(
            "Compare training runs with and without F-Noise, side by side over seeds: a figure (one "
            "panel per arm, shared y axes, mean ± std bands) and a summary table (<out>.md, <out>.json) "
            "with mean ± std per arm and the F-Noise − baseline difference with its 95% interval. "
            "With --train, first train both arms for each seed; every flag compare does not know is "
            "passed to `python -m fnoise_maskrcnn.train`, after compare's study defaults for the synthetic "
            "data on a CPU (" + " ".join(STUDY_TRAIN_FLAGS) + "), which --no-study-defaults leaves out."
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
        "--ignore-key", action="append", default=[], metavar="KEY",
        help="config.json key that does not define an arm (always ignored: "
        + ", ".join(DEFAULT_IGNORED_KEYS) + ")",
    )
    study = parser.add_argument_group("training both arms")
    study.add_argument(
        "--train", action="store_true", help="train the baseline and F-Noise arms, then compare"
    )
    study.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to train (default: 0 1 2)"
    )
    study.add_argument(
        "--no-study-defaults", action="store_true",
        help="pass only your own training flags (for real data: the study defaults limit images and size)",
    )
    study.add_argument(
        "--output-dir", type=Path, default=Path("runs/fnoise-study"),
        help="study directory: runs in OUTPUT_DIR/<baseline|fnoise>/seed<S> (default: runs/fnoise-study)",
    )
    return parser


def _check_train_flags(
    parser: argparse.ArgumentParser, defaults: Sequence[str], flags: Sequence[str]
) -> None:
    """Rejects flags compare sets itself, and lets train's parser check the rest before anything runs."""
    from .train import build_parser as build_train_parser

    for flag in flags:
        name = flag.split("=", 1)[0]
        if name in ("--seed", "--output-dir", "--resume", "--test-only"):
            parser.error(f"{name} is set by compare for each run; use --seeds and --output-dir of compare")
        if name == "--f-noise":
            parser.error("--f-noise is added by compare to the F-Noise arm only; leave it out")
    build_train_parser().parse_args([*defaults, *flags, "--seed", "0"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_mode = "--train" in argv
    parser = _build_parser(train_mode)
    if train_mode:
        args, train_flags = parser.parse_known_args(argv)
        if len(set(args.seeds)) != len(args.seeds):
            parser.error(f"--seeds must be distinct, got {' '.join(map(str, args.seeds))}")
        defaults = () if args.no_study_defaults else STUDY_TRAIN_FLAGS
        _check_train_flags(parser, defaults, train_flags)
        out = args.out or args.output_dir / "comparison.png"
        existing = [args.output_dir / arm / f"seed{s}" for s in args.seeds for arm, _ in ARM_DIRS]
        existing = [d for d in existing if (d / "last.pth").exists()]
        if existing:
            parser.error(
                f"--output-dir {args.output_dir} already holds runs ({existing[0]}); choose another directory"
            )
        try:
            run_dirs = train_arms(args.seeds, args.output_dir, train_flags, defaults=defaults)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        args = parser.parse_args(argv)
        if not args.runs:
            parser.error("give run directories to compare, or --train to train both arms first")
        if args.out is None:
            parser.error("--out is required (the comparison PNG)")
        out, run_dirs = args.out, args.runs
    if out.suffix.lower() != ".png":
        parser.error(f"--out {out}: must be a .png file")
    if args.smooth is not None and args.smooth < 1:
        parser.error(f"--smooth must be >= 1, got {args.smooth}")

    try:
        unique_dirs = list(dict.fromkeys(Path(d).resolve() for d in run_dirs))
        runs = [load_run(d) for d in unique_dirs]
        arms = group_runs(runs, (*DEFAULT_IGNORED_KEYS, *args.ignore_key))
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    summary = summarize(arms)
    markdown = summary_markdown(summary)
    save_figure(plot_comparison(arms, smoothing=args.smooth, title=args.title), out)
    write_text_atomic(markdown, out.with_suffix(".md"))
    write_text_atomic(json.dumps(summary, indent=2) + "\n", out.with_suffix(".json"))
    print(markdown)
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
