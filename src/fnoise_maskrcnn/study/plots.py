"""The comparison figure: one column per arm plus an overlay, one row per quantity, shared y axes."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .runs import LOSS_KEYS, Arm, run_complete, sigma_of
from .series import (
    epoch_series,
    final_epoch,
    final_values,
    gap_series,
    gap_training_key,
    iteration_series,
    smooth,
)
from .stats import seed_differences, t975

__all__ = ["PANELS", "plot_comparison"]

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


#: Characters per line of an arm's label: in a column's title and the figure's legend (one 3.6-inch
#: column at 10 and 9 pt), and under a tick of the final-AP panels (8 pt, up to five arms over half the
#: figure's width); and of a row's title beside its y axis (9 pt, a 2.3-inch row).
TITLE_WIDTH = 38
TICK_WIDTH = 26
ROW_TITLE_WIDTH = 30

Curve = tuple[np.ndarray, np.ndarray]


def wrap_label(label: str, width: int) -> str:
    """``label`` on lines of at most ``width`` characters, broken at spaces only: a word longer than
    ``width`` keeps a line of its own, and ``σ=0.11547`` or ``gaussian-dropout`` is never split."""
    return textwrap.fill(label, width, break_long_words=False, break_on_hyphens=False)


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
    y axis across columns. Rows without data in any run are left out. The arms' legend sits above the
    grid; the "AP vs σ" panels (final segm AP per arm, and paired differences from the baseline) get a
    row of their own below it, laid out apart so their axis labels do not widen the grid's columns.
    """
    window = _smoothing_window(arms, smoothing)
    rows = _panel_rows(arms)
    ap_points = _final_ap_points(arms)
    columns = len(arms) + 1
    height = 2.3 * (max(len(rows), 1) + 1.25 * (ap_points is not None)) + 1.2
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
    # Subfigures: the grid's legend goes under the suptitle, and the AP panels' labels stay out of the grid.
    grid_figure, ap_figure = (
        figure.subfigures(2, 1, height_ratios=[len(rows), 1.25])
        if ap_points is not None
        else (figure.subfigures(1, 1), None)
    )
    axes = grid_figure.subplots(len(rows), columns, squeeze=False, sharey="row")
    if ap_points is not None:
        left, right = ap_figure.subplots(1, 2)
        _plot_final_ap(left, ap_points)
        _plot_paired_differences(right, arms, ap_points)
    for r, (kind, row_title, per_arm) in enumerate(rows):
        y_range = _draw_row(axes[r], arms, kind, per_arm, window)
        last_of_kind = r == len(rows) - 1 or rows[r + 1][0] != kind
        _style_row(axes[r], kind, row_title, y_range, last_of_kind)
    for c, arm in enumerate(arms):
        axes[0, c].set_title(
            f"{wrap_label(arm.label, TITLE_WIDTH)}\nseeds {', '.join(map(str, arm.seeds))}", fontsize=10
        )
    axes[0, -1].set_title("all arms, mean ± std", fontsize=10)
    handles, labels = axes[0, -1].get_legend_handles_labels()
    if handles:
        grid_figure.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 5), fontsize=9)
    return figure


def _style_row(
    axes_row: Sequence[Any], kind: str, title: str, y_range: tuple[float, float], x_label: bool
) -> None:
    """Grid, ticks, the shared y range with a margin, the row's title and (if ``x_label``) the x title."""
    low, high = y_range
    if math.isfinite(low):
        margin = 0.06 * (high - low) if high > low else 0.05 * max(abs(high), 1e-3)
        axes_row[0].set_ylim(low - margin, high + margin)
    for ax in axes_row:
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        if kind == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if x_label:
            ax.set_xlabel("iteration" if kind == "iter" else "epoch", fontsize=9)
    axes_row[0].set_ylabel(wrap_label(title, ROW_TITLE_WIDTH), fontsize=9)


def _panel_rows(arms: Sequence[Arm]) -> list[tuple[str, str, list[list[Curve]]]]:
    """``(kind, row title, per arm the curve of each run)`` of the :data:`PANELS` that some run logged.

    Every run is drawn, in progress or not (the figure follows a study as it runs); the validation −
    training row is :func:`fnoise_maskrcnn.study.gap_series`, against the clean training loss when every
    run logged one (:func:`fnoise_maskrcnn.study.gap_training_key`).
    """
    rows = []
    gap_training = gap_training_key(run for arm in arms for run in arm.runs)
    for kind, key, row_title in PANELS:
        if key == GAP_PANEL_KEY:
            per_arm = [[gap_series(run, gap_training) for run in arm.runs] for arm in arms]
            if gap_training == "train_clean":
                row_title = "validation − clean training loss by epoch"
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
        for ax, label in ((axes_row[a], None), (axes_row[-1], wrap_label(arm.label, TITLE_WIDTH))):
            marker = "o-" if kind == "epoch" else "-"
            ax.plot(x, mean, marker, color=colour, linewidth=1.6, markersize=4, label=label)
            ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.25, linewidth=0)
        low, high = min(low, float((mean - std).min())), max(high, float((mean + std).max()))
    return low, high


class FinalAp(NamedTuple):
    """What the "AP vs σ" panels plot: per arm its x position, tick label, seed values and their seeds."""

    xs: list[float]
    ticks: list[str]
    values: list[list[float]]
    x_title: str
    seeds: list[list[Any]]
    #: the epoch of the values: the last one every run finished
    epoch: int
    #: whether every run has logged its final epoch (then ``epoch`` is the final one)
    finished: bool

    @property
    def quantity(self) -> str:
        """``"final segm AP"``, or ``"segm AP at epoch N"`` while some run is in progress."""
        return "final segm AP" if self.finished else f"segm AP at epoch {self.epoch}"

    @property
    def note(self) -> str:
        """A second title line when the values are not final, else ``""``."""
        return "" if self.finished else "\n(the last epoch every run finished: some runs are in progress)"


def _final_ap_points(arms: Sequence[Arm]) -> FinalAp | None:
    """Final segm AP per arm for the "AP vs σ" panels.

    x is σ when the arms differ only in ``f_noise_std`` (the baseline at σ = 0), else the arm's index.
    While some run is in progress the values are those of the last epoch every run finished, and
    ``finished`` is False. None when no arm has a segm AP at that epoch.
    """
    epoch = final_epoch(arms)
    if epoch is None:
        return None
    finals = [final_values(arm, "segm.AP", epoch) for arm in arms]
    values, seeds = [v for v, _ in finals], [s for _, s in finals]
    if not any(values):
        return None
    finished = all(run_complete(run) for arm in arms for run in arm.runs)
    noise_arms = [arm for arm in arms if not arm.is_baseline]
    stds = [sigma_of(arm.key.get("f_noise_std")) for arm in noise_arms]
    by_sigma = len(set(stds)) == len(noise_arms) and all(
        {k: v for k, v in arm.key.items() if k != "f_noise_std"}
        == {k: v for k, v in noise_arms[0].key.items() if k != "f_noise_std"}
        for arm in noise_arms
    )
    if by_sigma:
        xs = [0.0 if arm.is_baseline else sigma_of(arm.key.get("f_noise_std")) for arm in arms]
        return FinalAp(xs, [f"{x:g}" for x in xs], values, "F-Noise σ (0: baseline)", seeds, epoch, finished)
    indices = [float(i) for i in range(len(arms))]
    return FinalAp(indices, [arm.label for arm in arms], values, "arm", seeds, epoch, finished)


def _mean_and_half_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    half = t975(array.size - 1) * array.std(ddof=1) / math.sqrt(array.size) if array.size > 1 else 0.0
    return float(array.mean()), float(half)


def _plot_per_arm(
    ax: Any,
    xs: list[float],
    ticks: list[str],
    per_arm: Sequence[Sequence[float] | None],
    x_title: str,
    y_title: str,
    title: str,
) -> None:
    """One mean ± 95% CI marker per arm at its x, every value as a faint dot (arms without values skipped)."""
    for i, (x, values) in enumerate(zip(xs, per_arm)):
        if not values:
            continue
        mean, half = _mean_and_half_ci(values)
        ax.plot([x] * len(values), values, "o", color=f"C{i}", alpha=0.3, markersize=4)
        ax.errorbar([x], [mean], yerr=[half], fmt="s", color=f"C{i}", capsize=4, markersize=6)
    ax.set_xticks(xs, [wrap_label(tick, TICK_WIDTH) for tick in ticks], fontsize=8)
    ax.set_xlabel(x_title, fontsize=9)
    ax.set_ylabel(y_title, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)


def _plot_final_ap(ax: Any, points: FinalAp) -> None:
    """Mean ± 95% CI of each arm's final segm AP over seeds, with every seed's value as a faint dot."""
    title = f"{points.quantity} per arm: mean ± 95% CI over seeds, seeds as dots{points.note}"
    y_title = f"{points.quantity} (val)"
    _plot_per_arm(ax, points.xs, points.ticks, points.values, points.x_title, y_title, title)


def paired_ap_differences(
    arms: Sequence[Arm], values: Sequence[Sequence[float]], seeds: Sequence[Sequence[Any]]
) -> list[list[float] | None]:
    """Per arm, its final segm AP minus the baseline's, seed by seed over the seeds both have, in AP
    points (``None`` for the baseline itself, and for every arm when there is not exactly one baseline)."""
    baselines = [i for i, arm in enumerate(arms) if arm.is_baseline]
    if len(baselines) != 1:
        return [None] * len(arms)
    base = baselines[0]
    return [
        None if i == base else [100 * d for d in seed_differences(vals, arm_seeds, values[base], seeds[base])]
        for i, (vals, arm_seeds) in enumerate(zip(values, seeds))
    ]


def _plot_paired_differences(ax: Any, arms: Sequence[Arm], points: FinalAp) -> None:
    """Each F-Noise arm's final segm AP minus the baseline's, paired by seed, in AP points: mean ± 95% CI
    (unadjusted) with every seed's difference as a faint dot, and the line of no effect."""
    differences = paired_ap_differences(arms, points.values, points.seeds)
    title = f"F-Noise − baseline, paired by seed: mean ± 95% CI (unadjusted), seeds as dots{points.note}"
    y_title = f"Δ {points.quantity} (points)"
    _plot_per_arm(ax, points.xs, points.ticks, differences, points.x_title, y_title, title)
    ax.axhline(0.0, color="black", linewidth=0.8)
