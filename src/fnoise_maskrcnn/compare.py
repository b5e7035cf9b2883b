"""Does F-Noise change how Mask R-CNN learns? Side-by-side comparison of training runs over seeds.

Compare finished (or running) runs::

    python -m fnoise_maskrcnn.compare runs/a runs/b ... --out comparison.png

or train both arms for several seeds and compare them, in one command::

    python -m fnoise_maskrcnn.compare --train --seeds 0 1 2 [training flags]

Runs are grouped into arms by their ``config.json`` (see :func:`fnoise_maskrcnn.study.group_runs`);
the runs of an arm are its seeds. The figure has one column per arm plus one overlaying every arm's
mean ± std, and one row per quantity (training loss per iteration and per epoch, the five loss
components, validation loss, validation − training loss, bbox and segm AP), with a shared y axis per
row. Next to the PNG go a Markdown and a JSON summary (``<out>.md``, ``<out>.json``), over complete runs:
per arm the peak and final validation APs, the minimum validation loss and its epoch, the rise of the
validation loss after it and the validation − training gap, as mean ± std over seeds, and per F-Noise arm
the paired difference from its baseline with a 95% interval over seeds and whether it is within seed
noise (Holm-corrected with several F-Noise arms); the values of every run at the last common epoch; the
runs still in progress; and the training and evaluation hours.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .io.atomic import write_text_atomic
from .study import (
    DEFAULT_IGNORED_KEYS,
    LOSS_KEYS,
    Arm,
    Difference,
    Run,
    RunError,
    Stat,
    _t975,
    common_seed_difference,
    compute_seconds,
    describe,
    difference,
    epoch_records,
    epoch_series,
    final_epoch,
    final_values,
    gap_series,
    group_runs,
    holm,
    iteration_series,
    load_run,
    planned_epochs,
    run_complete,
    run_outcomes,
    sigma_of,
    smooth,
)
from .visualization import save_figure

__all__ = [
    "SUMMARY_METRICS",
    "OUTCOME_METRICS",
    "STUDY_TRAIN_FLAGS",
    "summarize",
    "summary_markdown",
    "plot_comparison",
    "train_arms",
    "main",
]

#: ``(name in the summary, dotted key of the epoch records, column title)``.
SUMMARY_METRICS = (
    ("train_loss", "train.loss", "training loss (epoch mean)"),
    ("val_loss", "val.loss", "validation loss"),
    ("bbox_AP", "bbox.AP", "bbox AP"),
    ("segm_AP", "segm.AP", "segm AP"),
)

#: ``(name in the summary, title, decimals, whether it gets a difference from the baseline)`` of the
#: whole-course numbers of complete runs (:func:`fnoise_maskrcnn.study.run_outcomes`).
OUTCOME_METRICS = (
    ("segm_AP_peak", "peak segm AP", 4, True),
    ("segm_AP_peak_epoch", "epoch of peak segm AP", 2, False),
    ("segm_AP_final", "final segm AP", 4, True),
    ("bbox_AP_peak", "peak bbox AP", 4, True),
    ("bbox_AP_peak_epoch", "epoch of peak bbox AP", 2, False),
    ("bbox_AP_final", "final bbox AP", 4, True),
    ("val_loss_min", "minimum validation loss", 4, True),
    ("val_loss_min_epoch", "epoch of minimum validation loss", 2, True),
    ("val_loss_final", "final validation loss", 4, False),
    ("val_loss_rise", "validation loss rise after its minimum", 4, True),
    ("gap_final", "validation − training loss, final epoch", 4, True),
)

#: The figure row of validation minus training loss (not a key of the epoch records: derived per run).
GAP_PANEL_KEY = "val.loss-train.loss"

#: ``(kind, key, title)`` of the figure's rows; ``kind`` is ``"iter"`` or ``"epoch"``.
PANELS = (
    ("iter", "loss", "training loss per iteration"),
    ("epoch", "train.loss", "training loss, epoch mean"),
    *(("iter", key, f"{key} per iteration") for key in LOSS_KEYS[1:]),
    ("epoch", "val.loss", "validation loss (F-Noise off)"),
    ("epoch", GAP_PANEL_KEY, "validation − training loss by epoch"),
    ("epoch", "bbox.AP", "bbox AP (val)"),
    ("epoch", "segm.AP", "segm AP (val)"),
)

#: Training flags of ``--train`` before the user's own (which override them). The rest comes from
#: ``train``'s default recipe (``synthetic``: ResNet-50 with GroupNorm from scratch, 160 px, 3 epochs of
#: 400 images, about 6.5 minutes a run on a 2-core CPU). One data-loading process keeps resuming bit-exact.
STUDY_TRAIN_FLAGS = ("--workers", "0", "--print-freq", "10")

ARM_DIRS = (("baseline", False), ("fnoise", True))

#: One arm of a study: its directory name and the training flags that make it.
ArmSpec = tuple[str, list[str]]


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``"f_noise_std=0.05,0.1"`` -> ``("f_noise_std", ["0.05", "0.1"])``; dashes in the key become
    underscores."""
    key, sep, values = text.partition("=")
    key = key.strip().lstrip("-").replace("-", "_")
    items = [v.strip() for v in values.split(",")]
    if not sep or not key.isidentifier() or not all(items):
        raise argparse.ArgumentTypeError(
            f"expected KEY=V1,V2,... (a train flag and its values), got {text!r}"
        )
    return key, items


def study_arms(sweeps: Sequence[tuple[str, Sequence[str]]], baseline: bool = True) -> list[ArmSpec]:
    """The arms of a study: the baseline (unless ``baseline=False``) and one F-Noise arm per point of the
    grid.

    Without sweeps the F-Noise arm is ``train --f-noise`` with its defaults. A sweep value may hold several
    words (``f_noise_levels=0 1,3``: levels "0 1", then "3").
    """
    arms: list[ArmSpec] = [("baseline", [])] if baseline else []
    if not sweeps:
        return arms + [("fnoise", ["--f-noise"])]
    for point in itertools.product(*[[(key, value) for value in values] for key, values in sweeps]):
        name = ",".join(f"{key}={value.replace(' ', '+')}" for key, value in point)
        flags = ["--f-noise"]
        for key, value in point:
            flags += [f"--{key.replace('_', '-')}", *value.split()]
        arms.append((name, flags))
    return arms


def _run_finished(run_dir: Path) -> bool:
    """Whether a run has logged all the epochs its ``config.json`` asks for."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
        epochs = len(epoch_records(run_dir))
    except (OSError, ValueError):  # RunError is a ValueError
        return False
    wanted = planned_epochs(config) if isinstance(config, dict) else None
    return epochs >= 1 and (wanted is None or epochs >= wanted)


# ----------------------------------------------------------------------------------------- summary
def summarize(arms: Sequence[Arm]) -> dict[str, Any]:
    """Final values per arm (mean ± std over seeds) and each F-Noise arm's difference from its baseline.

    Final values are those of the last epoch that every run finished (so runs of different lengths
    are compared at the same point; runs in progress included: a snapshot). A baseline is matched to an
    F-Noise arm when they agree on everything but the F-Noise settings.

    Besides, over complete runs only (runs in progress are listed in ``"in_progress"``): ``"outcomes"``,
    the peak and final APs, the minimum validation loss, the validation − training loss gap by epoch and
    the paired differences of these from the baseline (see :func:`_outcomes`); and ``"compute"``, the
    training and evaluation hours of every run (see :func:`_compute`).

    Returns:
        A JSON-able dict: ``{"epoch", "in_progress", "outcomes", "compute", "correction", "arms":
        [{"label", "key", "seeds", "runs", "metrics": {name: {"mean", "std", "n", "values", "seeds"} |
        None}}], "differences": [{"arm", "reference", "metric", "mean", "std", "stderr", "ci95", "paired",
        "n", "df", "p", "p_holm", "verdict"}]}``.
    """
    epoch = final_epoch(arms)
    stats: list[dict[str, Stat | None]] = []
    for arm in arms:
        per_metric = {}
        for name, path, _ in SUMMARY_METRICS:
            per_metric[name] = describe(*final_values(arm, path, epoch)) if epoch is not None else None
        stats.append(per_metric)

    differences = _differences(arms, stats, [name for name, _, _ in SUMMARY_METRICS], difference)
    correction = _apply_holm(differences)
    return {
        "epoch": epoch,
        "in_progress": _in_progress(arms),
        "outcomes": _outcomes(arms),
        "compute": _compute(arms),
        "correction": correction,
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


def _differences(
    arms: Sequence[Arm],
    stats: Sequence[dict[str, Stat | None]],
    names: Sequence[str],
    compare: Callable[[Stat, Stat], Difference],
) -> list[dict[str, Any]]:
    """Each F-Noise arm's ``compare(arm, baseline)`` for the metrics ``names`` that both sides have, against
    its matching baseline (:func:`_matching_baseline`); ``stats[i]`` are ``arms[i]``'s."""
    differences = []
    for arm, arm_stats in zip(arms, stats):
        reference = None if arm.is_baseline else _matching_baseline(arm, arms)
        if reference is None:
            continue
        reference_stats = stats[arms.index(reference)]
        for name in names:
            if arm_stats[name] is not None and reference_stats[name] is not None:
                diff = compare(arm_stats[name], reference_stats[name])
                differences.append(
                    {"arm": arm.label, "reference": reference.label, "metric": name, **_diff_dict(diff)}
                )
    return differences


def _in_progress(arms: Sequence[Arm]) -> list[dict[str, Any]]:
    """The runs that have not logged all their planned epochs: ``[{"arm", "seed", "run", "epochs_done",
    "epochs"}]``."""
    return [
        {
            "arm": arm.label,
            "seed": run.seed,
            "run": str(run.path),
            "epochs_done": len(run.epochs),
            "epochs": run.planned,
        }
        for arm in arms
        for run in arm.runs
        if not run_complete(run)
    ]


def _outcomes(arms: Sequence[Arm]) -> dict[str, Any]:
    """Whole-course numbers of each arm's complete runs and their paired differences from the baseline.

    Per arm, each of :data:`OUTCOME_METRICS` as mean ± std over the complete seeds (``None`` without
    one) and ``"gap_by_epoch"``: validation − training loss per evaluated epoch, mean ± std over seeds.
    Per F-Noise arm with a matching baseline, the difference of each compared metric, paired over the
    seeds complete in both arms (Holm-adjusted over the arms as in :func:`summarize`).

    Returns:
        ``{"arms": [{"label", "seeds", "n", "metrics": {name: stat | None}, "gap_by_epoch": [{"epoch",
        "mean", "std", "n", "values", "seeds"}]}], "differences": [...], "correction": "holm" | None}``.
    """
    complete = [[run for run in arm.runs if run_complete(run)] for arm in arms]
    stats = [_outcome_stats(runs) for runs in complete]
    compared = [name for name, _, _, compare in OUTCOME_METRICS if compare]
    differences = _differences(arms, stats, compared, common_seed_difference)
    correction = _apply_holm(differences)
    arm_dicts = [
        {
            "label": arm.label,
            "seeds": [run.seed for run in runs],
            "n": len(runs),
            "metrics": {name: _stat_dict(stat) for name, stat in arm_stats.items()},
            "gap_by_epoch": _gap_by_epoch(runs),
        }
        for arm, runs, arm_stats in zip(arms, complete, stats)
    ]
    return {"arms": arm_dicts, "differences": differences, "correction": correction}


def _outcome_stats(runs: Sequence[Run]) -> dict[str, Stat | None]:
    """Each of :data:`OUTCOME_METRICS` over ``runs`` (those that have it), as mean ± std with the seeds."""
    per_run = [(run.seed, run_outcomes(run)) for run in runs]
    stats = {}
    for name, _, _, _ in OUTCOME_METRICS:
        pairs = [(seed, values[name]) for seed, values in per_run if values[name] is not None]
        stats[name] = describe([value for _, value in pairs], [seed for seed, _ in pairs])
    return stats


def _gap_by_epoch(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Validation − training loss per epoch that some run evaluated: mean ± std over the runs that did."""
    by_epoch: dict[int, list[tuple[Any, float]]] = {}
    for run in runs:
        for epoch, gap in zip(*gap_series(run)):
            by_epoch.setdefault(int(epoch), []).append((run.seed, float(gap)))
    rows = []
    for epoch in sorted(by_epoch):
        stat = describe([gap for _, gap in by_epoch[epoch]], [seed for seed, _ in by_epoch[epoch]])
        rows.append({"epoch": epoch, **(_stat_dict(stat) or {})})
    return rows


def _compute(arms: Sequence[Arm]) -> dict[str, Any]:
    """Training and evaluation hours per arm and for the whole study: sums of every run's finished epochs'
    ``train_time`` and ``eval_time`` (runs in progress included).

    Returns:
        ``{"arms": [{"label", "runs", "epochs", "train_hours", "eval_hours", "hours"}], "train_hours",
        "eval_hours", "hours"}``.
    """
    rows = []
    for arm in arms:
        train, evaluation = compute_seconds(arm.runs)
        rows.append(
            {
                "label": arm.label,
                "runs": len(arm.runs),
                "epochs": sum(len(run.epochs) for run in arm.runs),
                "train_hours": train / 3600.0,
                "eval_hours": evaluation / 3600.0,
                "hours": (train + evaluation) / 3600.0,
            }
        )
    totals = {key: sum(row[key] for row in rows) for key in ("train_hours", "eval_hours", "hours")}
    return {"arms": rows, **totals}


def _apply_holm(differences: list[dict[str, Any]]) -> str | None:
    """With more than one F-Noise arm, Holm-adjusts each metric's p-values over the arms (in place).

    The verdict then follows the adjusted p-value (beyond seed noise when it is below 0.05). Returns
    ``"holm"`` when a correction was applied, else None.
    """
    applied = None
    for metric in dict.fromkeys(d["metric"] for d in differences):
        family = [d for d in differences if d["metric"] == metric and d["p"] is not None]
        if len(family) < 2:
            continue
        applied = "holm"
        for diff, adjusted in zip(family, holm([d["p"] for d in family])):
            diff["p_holm"] = adjusted
            diff["verdict"] = ("beyond" if adjusted < 0.05 else "within") + " seed noise (Holm)"
    return applied


def _matching_baseline(arm: Arm, arms: Sequence[Arm]) -> Arm | None:
    others = {k: v for k, v in arm.key.items() if not k.startswith("f_noise")}
    for candidate in arms:
        if candidate.is_baseline and {k: v for k, v in candidate.key.items() if k != "f_noise"} == others:
            return candidate
    return None


def _stat_dict(stat: Stat | None) -> dict[str, Any] | None:
    if stat is None:
        return None
    return {
        "mean": stat.mean,
        "std": stat.std,
        "n": stat.n,
        "values": list(stat.values),
        "seeds": list(stat.seeds),
    }


def _diff_dict(diff: Difference) -> dict[str, Any]:
    return {
        "mean": diff.mean,
        "std": diff.std,
        "stderr": diff.stderr,
        "ci95": None if diff.ci95 is None else list(diff.ci95),
        "paired": diff.paired,
        "n": diff.n,
        "df": diff.df,
        "p": diff.p,
        "p_holm": None,
        "verdict": diff.verdict,
    }


def _pm(stat: dict[str, Any] | None, digits: int = 4) -> str:
    if stat is None:
        return "n/a"
    if stat["std"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown: the runs in progress, the peak and final APs and the overfitting measures
    of complete runs with their differences from the baseline, the values at the last common epoch with
    theirs, and the compute."""
    lines = ["# F-Noise comparison", ""]
    lines += _in_progress_markdown(summary.get("in_progress") or [])
    if "outcomes" in summary:
        lines += _outcomes_markdown(summary["outcomes"])
    lines += _snapshot_markdown(summary)
    if "compute" in summary:
        lines += _compute_markdown(summary["compute"])
    lines += [
        "Notes: the training loss of an F-Noise arm is computed on perturbed features, so it is expected to "
        "differ from the baseline's even if the model learns the same; the validation loss and the APs are "
        'computed with F-Noise off. "Within seed noise" means these runs cannot tell the arms apart, not '
        "that the arms are equal.",
        "",
    ]
    return "\n".join(lines)


def _in_progress_markdown(in_progress: Sequence[dict[str, Any]]) -> list[str]:
    """One line naming the runs in progress (none: no line)."""
    if not in_progress:
        return []
    runs = ", ".join(
        f"{run['arm']} seed {run['seed']} ({run['epochs_done']} of {run['epochs'] or '?'} epochs)"
        for run in in_progress
    )
    return [
        f"**In progress**, left out of every statistic but the snapshot at the last common epoch (their "
        f"compute is counted): {runs}.",
        "",
    ]


def _seeds_cell(arm: dict[str, Any]) -> str:
    seeds = ", ".join(str(s) for s in arm["seeds"])
    if arm["n"] == 0:
        return "0 (none complete)"
    if arm["n"] == 1:
        return f"1 ({seeds}; one seed: means without std or CI)"
    return f"{arm['n']} ({seeds})"


def _outcome_table(arms: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """Rows of arms, columns of :data:`OUTCOME_METRICS` ``names`` (mean ± std over complete seeds)."""
    spec = {name: (title, digits) for name, title, digits, _ in OUTCOME_METRICS}
    lines = [
        "| arm | complete seeds | " + " | ".join(spec[name][0] for name in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for arm in arms:
        cells = [_pm(arm["metrics"][name], spec[name][1]) for name in names]
        lines.append(f"| {arm['label']} | {_seeds_cell(arm)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _outcomes_markdown(outcomes: dict[str, Any]) -> list[str]:
    """Peak and final APs, validation loss and gap of complete runs, their differences, the gap by epoch."""
    lines = [
        "## Does F-Noise help? Peak and final validation AP",
        "",
        "Complete runs only, mean ± sample std over seeds. Per run, the peak is the highest AP over its "
        "evaluated epochs (epochs counted from 0; its epoch is averaged over seeds) and the final value that "
        "of its last epoch. An arm with fewer than 2 complete seeds shows means without std or CI.",
        "",
    ]
    if not any(arm["n"] for arm in outcomes["arms"]):
        return lines + ["No run is complete yet: no peak, final or overfitting statistics.", ""]
    names = [name for name, _, _, _ in OUTCOME_METRICS]
    lines += _outcome_table(outcomes["arms"], names[:6])
    lines += [
        "## Does F-Noise delay overfitting? Validation loss and the validation − training gap",
        "",
        "Per run: the minimum validation loss and its epoch, the final validation loss, its rise after the "
        "minimum (final − minimum; 0 while it still falls at the end), and validation − training loss at "
        "the final epoch. A later minimum, a smaller rise or a smaller gap would each point to delayed "
        "overfitting.",
        "",
        "**The gap is biased for F-Noise arms.** The training loss is the mean over the epoch's iterations "
        "with the arm's F-Noise on: an F-Noise arm's training loss is measured on perturbed features, so it "
        "is higher than the same model's loss on clean features, and that shrinks its measured gap. A "
        "smaller gap under F-Noise is expected even without any less overfitting and is no evidence by "
        "itself; the epoch of the minimum and the rise after it use the validation loss alone (F-Noise off) "
        "and do not share this bias.",
        "",
    ]
    lines += _outcome_table(outcomes["arms"], names[6:])
    if outcomes["differences"]:
        titles = {name: (title, digits) for name, title, digits, _ in OUTCOME_METRICS}
        lines += ["### Differences from the baseline, complete runs paired by seed", ""]
        lines += _differences_markdown(outcomes["differences"], titles, outcomes.get("correction"))
    return lines + _gap_markdown(outcomes["arms"])


def _gap_markdown(arms: Sequence[dict[str, Any]]) -> list[str]:
    """Validation − training loss per epoch (rows) and arm (columns): mean ± std over complete seeds."""
    epochs = sorted({row["epoch"] for arm in arms for row in arm["gap_by_epoch"]})
    if not epochs:
        return []
    lines = [
        "### Validation − training loss by epoch",
        "",
        "Mean ± sample std over the complete seeds (biased for F-Noise arms, see above).",
        "",
        "| epoch | " + " | ".join(arm["label"] for arm in arms) + " |",
        "|---|" + "---|" * len(arms),
    ]
    for epoch in epochs:
        cells = [_pm(next((r for r in arm["gap_by_epoch"] if r["epoch"] == epoch), None)) for arm in arms]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return lines + [""]


def _differences_markdown(
    differences: Sequence[dict[str, Any]], titles: dict[str, tuple[str, int]], correction: str | None
) -> list[str]:
    """The table of differences from the baseline, with the explanation above it."""
    holm_note = (
        " With several F-Noise arms, each metric's p-values are Holm-adjusted over the arms (family-wise "
        "error rate 5%), and the verdict follows the adjusted p-value; the 95% intervals are per arm, "
        "unadjusted."
        if correction == "holm"
        else ""
    )
    lines = [
        "Differences from the baseline (F-Noise arm − baseline), in the metric's units "
        "(AP as a fraction: 0.01 = 1 AP point): mean ± std of the difference over seeds, 95% confidence "
        "interval (Student's t), two-sided p-value, and whether the difference is within seed noise."
        + holm_note,
        "",
        "| arm | metric | difference | 95% CI | p | Holm p | seeds | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for diff in differences:
        title, digits = titles[diff["metric"]]
        spread = "" if diff["std"] is None else f" ± {diff['std']:.{digits}f}"
        low_high = diff["ci95"]
        interval = "n/a" if low_high is None else f"[{low_high[0]:+.{digits}f}, {low_high[1]:+.{digits}f}]"
        pairing = "paired" if diff["paired"] else "unpaired"
        p_value = "n/a" if diff.get("p") is None else f"{diff['p']:.3g}"
        p_holm = "–" if diff.get("p_holm") is None else f"{diff['p_holm']:.3g}"
        lines.append(
            f"| {diff['arm']} | {title} | {diff['mean']:+.{digits}f}{spread} | {interval} | "
            f"{p_value} | {p_holm} | {diff['n']} {pairing} | {diff['verdict']} |"
        )
    return lines + [""]


def _snapshot_markdown(summary: dict[str, Any]) -> list[str]:
    """The values of every run at the last epoch they all finished, and their differences."""
    lines = ["## Values at the last common epoch", ""]
    if summary["epoch"] is None:
        return lines + ["Not every run has finished an epoch yet: no final values.", ""]
    snapshot = (
        " Runs in progress are included: a snapshot at a common epoch, not final values."
        if summary.get("in_progress")
        else ""
    )
    lines += [
        f"Values after epoch {summary['epoch']} (the last epoch every run finished), as mean ± sample std "
        "over seeds (one seed: the value alone)." + snapshot,
        "",
        "| arm | seeds | " + " | ".join(title for _, _, title in SUMMARY_METRICS) + " |",
        "|---|---|" + "---|" * len(SUMMARY_METRICS),
    ]
    for arm in summary["arms"]:
        seeds = ", ".join(str(s) for s in arm["seeds"])
        cells = [_pm(arm["metrics"][name]) for name, _, _ in SUMMARY_METRICS]
        lines.append(f"| {arm['label']} | {len(arm['seeds'])} ({seeds}) | " + " | ".join(cells) + " |")
    lines.append("")
    if summary["differences"]:
        titles = {name: (title, 4) for name, _, title in SUMMARY_METRICS}
        lines += _differences_markdown(summary["differences"], titles, summary.get("correction"))
    return lines


def _compute_markdown(compute: dict[str, Any]) -> list[str]:
    """Training and evaluation hours per arm and for the study."""
    lines = [
        "## Compute",
        "",
        "Hours: the sum over runs of each finished epoch's training and evaluation time (runs in progress "
        "included; an epoch cut short by an interruption is not counted).",
        "",
        "| arm | runs | finished epochs | training h | evaluation h | total h |",
        "|---|---|---|---|---|---|",
    ]
    for arm in compute["arms"]:
        lines.append(
            f"| {arm['label']} | {arm['runs']} | {arm['epochs']} | {arm['train_hours']:.2f} | "
            f"{arm['eval_hours']:.2f} | {arm['hours']:.2f} |"
        )
    runs, epochs = sum(arm["runs"] for arm in compute["arms"]), sum(arm["epochs"] for arm in compute["arms"])
    lines.append(
        f"| **study total** | {runs} | {epochs} | {compute['train_hours']:.2f} | "
        f"{compute['eval_hours']:.2f} | {compute['hours']:.2f} |"
    )
    return lines + [""]


# -------------------------------------------------------------------------------------------- plot
Curve = tuple[np.ndarray, np.ndarray]


def _aggregate(curves: list[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
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


def _smoothing_window(arms: Sequence[Arm], requested: int | None) -> int:
    if requested is not None:
        return max(1, requested)
    lengths = [len(run.iterations) for arm in arms for run in arm.runs]
    return max(1, round(max(lengths, default=0) / 25))


def plot_comparison(arms: Sequence[Arm], *, smoothing: int | None = None, title: str = "") -> Figure:
    """The comparison figure: one column per arm plus an overlay column, one row per quantity.

    Per-iteration rows show each seed's raw curve faintly and the mean of the smoothed curves (centred
    moving average over ``smoothing`` logged iterations; default: a 25th of the run) with a ± std band
    over seeds. Per-epoch rows show each seed's values as dots and the mean ± std. Each row shares its
    y axis across columns. Rows without data in any run are left out.
    """
    window = _smoothing_window(arms, smoothing)
    rows = _panel_rows(arms)
    ap_points = _final_ap_points(arms)
    columns = len(arms) + 1
    height = 2.3 * (max(len(rows), 1) + (ap_points is not None)) + 0.8
    figure = Figure(figsize=(3.6 * columns, height), dpi=60, layout="constrained")
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
    axes = figure.subplots(len(rows) + (ap_points is not None), columns, squeeze=False, sharey="row")
    if ap_points is not None:
        grid = axes[-1, 0].get_gridspec()
        for ax in axes[-1]:
            ax.remove()
        _plot_final_ap(figure.add_subplot(grid[-1, :]), *ap_points)
        axes = axes[:-1]
    for r, (kind, row_title, per_arm) in enumerate(rows):
        low, high = _draw_row(axes[r], arms, kind, per_arm, window)
        if math.isfinite(low):
            margin = 0.06 * (high - low) if high > low else 0.05 * max(abs(high), 1e-3)
            axes[r, 0].set_ylim(low - margin, high + margin)
        for ax in axes[r]:
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


def _panel_rows(arms: Sequence[Arm]) -> list[tuple[str, str, list[list[Curve]]]]:
    """``(kind, row title, per arm the curve of each run)`` of the :data:`PANELS` that some run logged.

    Every run is drawn, in progress or not (the figure follows a study as it runs); the validation −
    training row is :func:`fnoise_maskrcnn.study.gap_series`.
    """
    rows = []
    for kind, key, row_title in PANELS:
        if key == GAP_PANEL_KEY:
            per_arm = [[gap_series(run) for run in arm.runs] for arm in arms]
        else:
            series_of = iteration_series if kind == "iter" else epoch_series
            per_arm = [[series_of(run, key) for run in arm.runs] for arm in arms]
        if any(x.size for curves in per_arm for x, _ in curves):
            rows.append((kind, row_title, per_arm))
    return rows


def _draw_row(
    axes_row: Sequence[Any], arms: Sequence[Arm], kind: str, per_arm: list[list[Curve]], window: int
) -> tuple[float, float]:
    """Draw one row (each arm's column, then the overlay in the last); return the y range to show."""
    low, high = math.inf, -math.inf
    for a, (arm, curves) in enumerate(zip(arms, per_arm)):
        colour = f"C{a}"
        curves_drawn = [(x, smooth(y, window)) for x, y in curves] if kind == "iter" else curves
        for x, y in curves:
            if kind == "iter":
                axes_row[a].plot(x, y, color=colour, alpha=0.18, linewidth=0.6)
            else:
                axes_row[a].plot(x, y, "o", color=colour, alpha=0.35, markersize=3)
        aggregated = _aggregate(curves_drawn)
        if aggregated is None:
            for _, y in curves_drawn:
                if y.size:
                    low, high = min(low, float(y.min())), max(high, float(y.max()))
            continue
        x, mean, std = aggregated
        for ax, label in ((axes_row[a], None), (axes_row[-1], arm.label)):
            marker = "o-" if kind == "epoch" else "-"
            ax.plot(x, mean, marker, color=colour, linewidth=1.6, markersize=4, label=label)
            ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.25, linewidth=0)
        low, high = min(low, float((mean - std).min())), max(high, float((mean + std).max()))
    return low, high


def _final_ap_points(arms: Sequence[Arm]) -> tuple[list[float], list[str], list[list[float]], str] | None:
    """Final segm AP per arm for the "AP vs σ" panel: x positions, tick labels, seed values, x title.

    x is σ when the arms differ only in ``f_noise_std`` (the baseline at σ = 0), else the arm's index.
    None when no arm has a final segm AP.
    """
    epoch = final_epoch(arms)
    if epoch is None:
        return None
    values = [final_values(arm, "segm.AP", epoch)[0] for arm in arms]
    if not any(values):
        return None
    noise_arms = [arm for arm in arms if not arm.is_baseline]
    stds = [sigma_of(arm.key.get("f_noise_std")) for arm in noise_arms]
    by_sigma = len(set(stds)) == len(noise_arms) and all(
        {k: v for k, v in arm.key.items() if k != "f_noise_std"}
        == {k: v for k, v in noise_arms[0].key.items() if k != "f_noise_std"}
        for arm in noise_arms
    )
    if by_sigma:
        xs = [0.0 if arm.is_baseline else sigma_of(arm.key.get("f_noise_std")) for arm in arms]
        return xs, [f"{x:g}" for x in xs], values, "F-Noise σ (0: baseline)"
    return [float(i) for i in range(len(arms))], [arm.label for arm in arms], values, "arm"


def _plot_final_ap(
    ax: Any, xs: list[float], ticks: list[str], values: list[list[float]], x_title: str
) -> None:
    """Mean ± 95% CI of each arm's final segm AP over seeds, with every seed's value as a faint dot."""
    for i, (x, seed_values) in enumerate(zip(xs, values)):
        if not seed_values:
            continue
        array = np.asarray(seed_values, dtype=np.float64)
        half = _t975(array.size - 1) * array.std(ddof=1) / math.sqrt(array.size) if array.size > 1 else 0.0
        ax.plot([x] * array.size, array, "o", color=f"C{i}", alpha=0.3, markersize=4)
        ax.errorbar([x], [array.mean()], yerr=[half], fmt="s", color=f"C{i}", capsize=4, markersize=6)
    ax.set_xticks(xs, ticks, fontsize=8)
    ax.set_xlabel(x_title, fontsize=9)
    ax.set_ylabel("final segm AP (val)", fontsize=9)
    ax.set_title("final segm AP per arm: mean ± 95% CI over seeds, seeds as dots", fontsize=10)
    ax.grid(True, alpha=0.3)


# ------------------------------------------------------------------------------------------- train
def train_arms(
    seeds: Sequence[int],
    output_dir: Path,
    train_flags: Sequence[str],
    *,
    defaults: Sequence[str] = STUDY_TRAIN_FLAGS,
    arms: Sequence[ArmSpec] = (("baseline", []), ("fnoise", ["--f-noise"])),
    jobs: int = 1,
    devices: Sequence[str] = (),
    python: str = sys.executable,
) -> list[Path]:
    """Trains every arm for each seed, ``jobs`` ``fnoise_maskrcnn.train`` processes at a time; resumable.

    Run ``(arm, seed)`` goes to ``output_dir/<arm>/seed<S>`` with its console output in
    ``output_dir/logs/<arm>-seed<S>.log``. Every arm gets the same flags (``defaults`` then
    ``train_flags``, so the latter win) and ``--seed S``, so a seed means the same initial weights and
    data order in every arm; then the arm's own flags. Seeds are interleaved (every arm of seed 0, then
    seed 1 ...) so that an interrupted study still holds complete sets. Run again after an interruption
    (even ``kill -9``), it keeps finished runs, resumes interrupted ones from their ``last.pth``
    (``train --resume``) and trains only what is missing. With ``devices``, job ``i`` of those running at
    once gets ``--device devices[i % len(devices)]``.

    Raises:
        RuntimeError: a training run failed (the message names its log file).
    """
    output_dir = Path(output_dir)
    logs = output_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    queue = [
        (number, arm, flags, seed)
        for number, (seed, (arm, flags)) in enumerate(
            ((seed, arm) for seed in seeds for arm in arms), start=1
        )
    ]
    free_devices = list(devices)

    def one(job: tuple[int, str, list[str], int]) -> Path:
        number, arm, flags, seed = job
        run_dir = output_dir / arm / f"seed{seed}"
        if _run_finished(run_dir):
            print(f"[{number}/{len(queue)}] {arm} seed {seed}: finished before, kept", flush=True)
            return run_dir
        device = free_devices.pop(0) if free_devices else None
        try:
            _train_one(
                python, [*defaults, *train_flags], flags, arm, seed, run_dir, logs, number, len(queue), device
            )
        finally:
            if device is not None:
                free_devices.append(device)
        return run_dir

    if jobs <= 1:
        return [one(job) for job in queue]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, queue))


def _train_one(
    python: str,
    common: Sequence[str],
    arm_flags: Sequence[str],
    arm: str,
    seed: int,
    run_dir: Path,
    logs: Path,
    number: int,
    total: int,
    device: str | None,
) -> None:
    """One ``train`` process (resumed when ``run_dir`` holds a checkpoint); raises RuntimeError on failure."""
    log = logs / f"{arm}-seed{seed}.log"
    resume = (run_dir / "last.pth").is_file()
    command = [
        python,
        "-m",
        "fnoise_maskrcnn.train",
        *common,
        "--seed",
        str(seed),
        "--output-dir",
        str(run_dir),
        *arm_flags,
        *(["--device", device] if device else []),
        *(["--resume"] if resume else []),
    ]
    print(
        f"[{number}/{total}] {arm} seed {seed} -> {run_dir}{' (resumed)' if resume else ''} (log: {log})",
        flush=True,
    )
    start = time.perf_counter()
    with open(log, "a" if resume else "w") as log_file:
        log_file.write(" ".join(command) + "\n")
        log_file.flush()
        code = subprocess.call(command, stdout=log_file, stderr=subprocess.STDOUT)
    if code != 0:
        tail = [line for line in log.read_text().splitlines() if line.strip()][-1:]
        raise RuntimeError(f"training {arm} seed {seed} failed (exit {code}; see {log}): {''.join(tail)}")
    print(f"    {arm} seed {seed} done in {time.perf_counter() - start:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------- CLI
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
        "--ignore-key",
        action="append",
        default=[],
        metavar="KEY",
        help="config.json key that does not define an arm (always ignored: "
        + ", ".join(DEFAULT_IGNORED_KEYS)
        + ")",
    )
    _add_study_arguments(parser)
    return parser


def _add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--train`` group of compare's flags."""
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

    for flag in flags:
        name = flag.split("=", 1)[0]
        if name in ("--seed", "--output-dir", "--resume", "--test-only", "--device"):
            parser.error(
                f"{name} is set by compare for each run; use --seeds, --output-dir, --devices of compare"
            )
        if name == "--f-noise":
            parser.error("--f-noise is added by compare to the F-Noise arms only; leave it out")
    train_parser = build_train_parser()
    known = {action.dest for action in train_parser._actions}  # argparse has no public list
    for name, _ in arms:
        for key in (part.split("=", 1)[0] for part in name.split(",") if "=" in part):
            if key not in known or key in ("seed", "output_dir", "resume", "f_noise", "device"):
                parser.error(f"--sweep {key}: not a training flag compare can sweep")
    for _, arm_flags in arms:
        train_parser.parse_args([*defaults, *flags, *arm_flags, "--seed", "0"])


def _train_study(
    parser: argparse.ArgumentParser, args: argparse.Namespace, train_flags: list[str]
) -> tuple[Path, list[Path]]:
    """``--train``: check the study flags, train every arm and seed; return the PNG path and the runs.

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
    out = args.out or args.output_dir / "comparison.png"
    run_dirs = train_arms(
        args.seeds,
        args.output_dir,
        train_flags,
        defaults=defaults,
        arms=arms,
        jobs=args.jobs,
        devices=args.devices,
    )
    return out, run_dirs


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_mode = "--train" in argv
    parser = _build_parser(train_mode)
    if train_mode:
        args, train_flags = parser.parse_known_args(argv)
        try:
            out, run_dirs = _train_study(parser, args, train_flags)
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
