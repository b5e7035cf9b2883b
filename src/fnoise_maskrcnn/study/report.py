"""The summary of a comparison: a JSON-able dict (:func:`summarize`), its Markdown (:func:`summary_markdown`).

Over complete runs: per arm the peak and final validation APs, the minimum validation loss, its rise and
the validation − training gap as mean ± std over seeds, and per F-Noise arm the paired difference from its
baseline (Holm-corrected with several F-Noise arms); the values of every run at the last common epoch; the
runs still in progress; and the training and evaluation hours.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .runs import Arm, Run, run_complete
from .series import (
    compute_seconds,
    epoch_series,
    final_epoch,
    final_values,
    gap_series,
    gap_training_key,
    run_outcomes,
)
from .stats import Difference, Stat, common_seed_difference, describe, holm

__all__ = ["SUMMARY_METRICS", "OUTCOME_METRICS", "summarize", "summary_markdown"]

#: ``(name in the summary, dotted key of the epoch records, column title)``. The clean training loss is
#: there only for runs trained with ``--train-loss-images`` (and only at evaluated epochs): beside the
#: validation loss it splits a change in the validation − training gap into its two sides.
SUMMARY_METRICS = (
    ("train_loss", "train.loss", "training loss (epoch mean)"),
    ("train_clean_loss", "train_clean.loss", "clean training loss (F-Noise off)"),
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


def summarize(arms: Sequence[Arm]) -> dict[str, Any]:
    """Final values per arm (mean ± std over seeds) and each F-Noise arm's difference from its baseline.

    Final values are those of the last epoch that every run finished (so runs of different lengths
    are compared at the same point; runs in progress included: a snapshot); differences are paired over
    the seeds both arms have (:func:`~fnoise_maskrcnn.study.stats.common_seed_difference`). A baseline is
    matched to an F-Noise arm when they agree on everything but the F-Noise settings.

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

    differences = _differences(arms, stats, [name for name, _, _ in SUMMARY_METRICS])
    correction = _apply_holm(differences)
    return {
        "epoch": epoch,
        "in_progress": _in_progress(arms),
        "outcomes": _outcomes(arms),
        "compute": _compute(arms),
        "correction": correction,
        "precision_by_seed": _precision_by_seed(arms),
        "processors": _processor_counts(arms),
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


def _processor_counts(arms: Sequence[Arm]) -> dict[str, int]:
    """``{processor: number of runs}``; a run resumed on another model counts under ``"A then B"``."""
    names = [" then ".join(run.processors) or "not recorded" for arm in arms for run in arm.runs]
    return dict(Counter(names))  # in order of first appearance


def _precision_by_seed(arms: Sequence[Arm]) -> dict[str, str]:
    """``{seed: precision}``: what ``--amp`` resolved to for each seed's runs (one per seed, see
    :func:`~fnoise_maskrcnn.study.runs.group_runs`)."""
    return {str(run.seed): str(run.precision) for arm in arms for run in arm.runs}


def _differences(
    arms: Sequence[Arm],
    stats: Sequence[dict[str, Stat | None]],
    names: Sequence[str],
) -> list[dict[str, Any]]:
    """Each F-Noise arm's difference from its matching baseline (:func:`_matching_baseline`), paired over
    the seeds both have (:func:`common_seed_difference`), for the metrics ``names`` that both sides have;
    ``stats[i]`` are ``arms[i]``'s."""
    differences = []
    for arm, arm_stats in zip(arms, stats):
        reference = None if arm.is_baseline else _matching_baseline(arm, arms)
        if reference is None:
            continue
        reference_stats = stats[arms.index(reference)]
        for name in names:
            if arm_stats[name] is not None and reference_stats[name] is not None:
                diff = common_seed_difference(arm_stats[name], reference_stats[name])
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
    one), ``"segm_AP_by_epoch"``: validation segm AP per evaluated epoch, and ``"gap_by_epoch"``:
    validation − training loss per evaluated epoch, both mean ± std over seeds.
    Per F-Noise arm with a matching baseline, the difference of each compared metric, paired over the
    seeds complete in both arms (Holm-adjusted over the arms as in :func:`summarize`).

    The gap uses the clean training loss when every complete run logged it (``"gap_training":
    "train_clean"``), else the epoch mean of the training iterations (``"train"``); see
    :func:`fnoise_maskrcnn.study.gap_training_key`.

    Returns:
        ``{"arms": [{"label", "seeds", "n", "metrics": {name: stat | None}, "segm_AP_by_epoch": rows,
        "gap_by_epoch": rows}], "differences": [...], "correction": "holm" | None, "gap_training":
        "train_clean" | "train"}``, each of ``rows`` ``{"epoch", "mean", "std", "n", "values", "seeds"}``.
    """
    complete = [[run for run in arm.runs if run_complete(run)] for arm in arms]
    gap_training = gap_training_key(run for runs in complete for run in runs)
    stats = [_outcome_stats(runs, gap_training) for runs in complete]
    compared = [name for name, _, _, compare in OUTCOME_METRICS if compare]
    differences = _differences(arms, stats, compared)
    correction = _apply_holm(differences)
    arm_dicts = [
        {
            "label": arm.label,
            "seeds": [run.seed for run in runs],
            "n": len(runs),
            "metrics": {name: _stat_dict(stat) for name, stat in arm_stats.items()},
            "segm_AP_by_epoch": _by_epoch(runs, lambda run: epoch_series(run, "segm.AP")),
            "gap_by_epoch": _by_epoch(runs, lambda run: gap_series(run, gap_training)),
        }
        for arm, runs, arm_stats in zip(arms, complete, stats)
    ]
    return {
        "arms": arm_dicts,
        "differences": differences,
        "correction": correction,
        "gap_training": gap_training,
    }


def _outcome_stats(runs: Sequence[Run], gap_training: str) -> dict[str, Stat | None]:
    """Each of :data:`OUTCOME_METRICS` over ``runs`` (those that have it), as mean ± std with the seeds."""
    per_run = [(run.seed, run_outcomes(run, gap_training)) for run in runs]
    stats = {}
    for name, _, _, _ in OUTCOME_METRICS:
        pairs = [(seed, values[name]) for seed, values in per_run if values[name] is not None]
        stats[name] = describe([value for _, value in pairs], [seed for seed, _ in pairs])
    return stats


def _by_epoch(
    runs: Sequence[Run], series: Callable[[Run], tuple[np.ndarray, np.ndarray]]
) -> list[dict[str, Any]]:
    """A per-epoch ``series`` of each run, at every epoch some run has: mean ± std over the runs that do."""
    by_epoch: dict[int, list[tuple[Any, float]]] = {}
    for run in runs:
        for epoch, value in zip(*series(run)):
            by_epoch.setdefault(int(epoch), []).append((run.seed, float(value)))
    rows = []
    for epoch in sorted(by_epoch):
        stat = describe([value for _, value in by_epoch[epoch]], [seed for seed, _ in by_epoch[epoch]])
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


def _pm_of_seeds(stat: dict[str, Any] | None, seeds: int) -> str:
    """:func:`_pm`, saying how many seeds it is over when fewer than the arm's ``seeds`` logged it."""
    if stat is not None and stat["n"] < seeds:
        return f"{_pm(stat)} ({stat['n']} seeds)"
    return _pm(stat)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown: the runs in progress, the peak and final APs and the overfitting measures
    of complete runs with their differences from the baseline, the values at the last common epoch with
    theirs, and the compute."""
    lines = ["# F-Noise comparison", ""]
    lines += _in_progress_markdown(summary.get("in_progress") or [])
    lines += _precision_markdown(summary.get("precision_by_seed") or {})
    lines += _processor_markdown(summary.get("processors") or {})
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


def _precision_markdown(by_seed: dict[str, str]) -> list[str]:
    """One line naming the seeds of each precision, when the study holds more than one."""
    groups: dict[str, list[str]] = {}
    for seed, precision in by_seed.items():
        groups.setdefault(precision, []).append(seed)
    if len(groups) < 2:
        return []
    parts = "; ".join(
        f"{'seeds' if len(seeds) > 1 else 'seed'} {', '.join(seeds)} in {precision}"
        for precision, seeds in groups.items()
    )
    return [
        f"Precision: {parts}. Every arm of a seed trained in its precision, so each paired difference "
        "compares like with like; an effect of precision shows as spread between seeds.",
        "",
    ]


def _processor_markdown(counts: dict[str, int]) -> list[str]:
    """One line counting the runs of each processor model, when the study's runs name more than one."""
    if len(counts) < 2:
        return []
    parts = "; ".join(f"{name}: {n} run{'s' if n > 1 else ''}" for name, n in counts.items())
    return [
        f"Processors: {parts}. One seed on two processor models starts from the same weights and data "
        "order but does not repeat bit for bit, so a pair split between models also differs in the order "
        "of its floating-point sums, which adds to the spread of the paired differences and their intervals.",
        "",
    ]


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
    lines += _by_epoch_markdown(
        outcomes["arms"],
        "segm_AP_by_epoch",
        "### Validation segm AP by epoch",
        "Mean ± sample std over the complete seeds: when each arm learns, peaks and levels off.",
    )
    lines += [
        "## Does F-Noise delay overfitting? Validation loss and the validation − training gap",
        "",
        "Per run: the minimum validation loss and its epoch, the final validation loss, its rise after the "
        "minimum (final − minimum; 0 while it still falls at the end), and validation − training loss at "
        "the final epoch. A later minimum, a smaller rise or a smaller gap would each point to delayed "
        "overfitting.",
        "",
        _GAP_TRAINING_NOTES[outcomes.get("gap_training", "train")],
        "",
    ]
    lines += _outcome_table(outcomes["arms"], names[6:])
    if outcomes["differences"]:
        titles = {name: (title, digits) for name, title, digits, _ in OUTCOME_METRICS}
        lines += ["### Differences from the baseline, complete runs paired by seed", ""]
        lines += _differences_markdown(outcomes["differences"], titles, outcomes.get("correction"))
    clean = outcomes.get("gap_training", "train") == "train_clean"
    which = "F-Noise off" if clean else "biased for F-Noise arms, see above"
    return lines + _by_epoch_markdown(
        outcomes["arms"],
        "gap_by_epoch",
        "### Validation − training loss by epoch",
        f"Mean ± sample std over the complete seeds ({which}).",
    )


#: What the training loss of the gap is, by :func:`fnoise_maskrcnn.study.gap_training_key`.
_GAP_TRAINING_NOTES = {
    "train_clean": "**The gap compares like with like.** Its training loss is measured as the validation "
    "loss is, with F-Noise off, on the first training images with the validation transforms "
    "(`train --train-loss-images`), in every arm and at every evaluated epoch.",
    "train": "**The gap is biased for F-Noise arms.** The training loss is the mean over the epoch's "
    "iterations with the arm's F-Noise on: an F-Noise arm's training loss is measured on perturbed "
    "features, so it is higher than the same model's loss on clean features, and that shrinks its measured "
    "gap. A smaller gap under F-Noise is expected even without any less overfitting and is no evidence by "
    "itself; the epoch of the minimum and the rise after it use the validation loss alone (F-Noise off) "
    "and do not share this bias. Runs trained with `--train-loss-images N` log a clean training loss, and "
    "the gap then uses it.",
}


def _by_epoch_markdown(arms: Sequence[dict[str, Any]], key: str, heading: str, note: str) -> list[str]:
    """The per-epoch rows ``arm[key]`` as a table: epochs down, arms across, mean ± std over seeds."""
    epochs = sorted({row["epoch"] for arm in arms for row in arm[key]})
    if not epochs:
        return []
    lines = [
        heading,
        "",
        note,
        "",
        "| epoch | " + " | ".join(arm["label"] for arm in arms) + " |",
        "|---|" + "---|" * len(arms),
    ]
    for epoch in epochs:
        cells = [_pm(next((r for r in arm[key] if r["epoch"] == epoch), None)) for arm in arms]
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
        "interval (Student's t), two-sided p-value, and whether the difference is within seed noise. "
        "When every seed gives exactly the same nonzero difference (a whole number of epochs, say), t is "
        "undefined: the interval is n/a and p is the exact sign test's, 2 × 0.5^n." + holm_note,
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
        return lines + ["No run has finished an epoch yet: no values.", ""]
    in_progress = summary.get("in_progress") or []
    snapshot = (
        " Runs in progress are included: a snapshot at a common epoch, not final values."
        if in_progress
        else ""
    )
    if any(run["epochs_done"] == 0 for run in in_progress):
        snapshot += " Runs with no finished epoch yet are left out."
    # a column no run logged at this epoch (the clean training loss, usually) is left out
    shown = [m for m in SUMMARY_METRICS if any(arm["metrics"][m[0]] for arm in summary["arms"])]
    lines += [
        f"Values after epoch {summary['epoch']} (the last epoch every run finished), as mean ± sample std "
        "over seeds (one seed: the value alone)." + snapshot,
        "",
        "| arm | seeds | " + " | ".join(title for _, _, title in shown) + " |",
        "|---|---|" + "---|" * len(shown),
    ]
    for arm in summary["arms"]:
        seeds = ", ".join(str(s) for s in arm["seeds"])
        cells = [_pm_of_seeds(arm["metrics"][name], len(arm["seeds"])) for name, _, _ in shown]
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
