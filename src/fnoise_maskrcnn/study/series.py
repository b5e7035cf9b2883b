"""The numbers of a run: its curves per iteration and per epoch, its whole-course outcomes, its compute."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .runs import Arm, Run

__all__ = [
    "iteration_series",
    "epoch_series",
    "smooth",
    "gap_series",
    "gap_training_key",
    "OUTCOME_KEYS",
    "run_outcomes",
    "compute_seconds",
    "final_epoch",
    "final_values",
]


def _nested(record: Mapping[str, Any], path: str) -> float | None:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def iteration_series(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(iterations int64 [T], values float64 [T])`` of an ``"iter"`` key (e.g. ``"loss"``); gaps skipped."""
    return _points([(r["iteration"], _nested(r, key)) for r in run.iterations])


def epoch_series(run: Run, path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs int64 [E], values float64 [E])`` of a dotted epoch key (``"bbox.AP"``); gaps skipped."""
    return _points([(r["epoch"], _nested(r, path)) for r in run.epochs])


def _points(points: list[tuple[int, float | None]]) -> tuple[np.ndarray, np.ndarray]:
    kept = [(x, y) for x, y in points if y is not None]
    return np.array([x for x, _ in kept], dtype=np.int64), np.array([y for _, y in kept], dtype=np.float64)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` points (shrinking at the ends); same shape as ``values``."""
    if window <= 1 or values.size == 0:
        return values.astype(np.float64)
    kernel = np.ones(window)
    sums = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones_like(values, dtype=np.float64), kernel, mode="same")
    return sums / counts


def gap_training_key(runs: Iterable[Run]) -> str:
    """The training loss to measure the validation − training gap against, the same for all ``runs``:

    ``"train_clean"`` when every evaluated epoch of every run logged the loss on training images with
    F-Noise off (``train --train-loss-images``), else ``"train"``, the mean over the epoch's training
    iterations (measured on perturbed features in F-Noise arms, which shrinks their gap).
    """
    evaluated = [r for run in runs for r in run.epochs if _nested(r, "val.loss") is not None]
    if evaluated and all(_nested(r, "train_clean.loss") is not None for r in evaluated):
        return "train_clean"
    return "train"


def gap_series(run: Run, training: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, validation loss - training loss)`` at the epochs that logged both (the evaluated ones);
    ``training``: the epoch record's group of training losses, ``"train"`` or ``"train_clean"``."""
    points: list[tuple[int, float | None]] = []
    for record in run.epochs:
        val, train = _nested(record, "val.loss"), _nested(record, f"{training}.loss")
        points.append((record["epoch"], None if val is None or train is None else val - train))
    return _points(points)


#: The per-run numbers of :func:`run_outcomes`.
OUTCOME_KEYS = (
    "segm_AP_peak",
    "segm_AP_peak_epoch",
    "segm_AP_final",
    "bbox_AP_peak",
    "bbox_AP_peak_epoch",
    "bbox_AP_final",
    "val_loss_min",
    "val_loss_min_epoch",
    "val_loss_final",
    "val_loss_rise",
    "gap_final",
)


def run_outcomes(run: Run, gap_training: str = "train") -> dict[str, float | None]:
    """A run's whole-course numbers, over its evaluated epochs (``None`` where it logged none):

    - ``{segm,bbox}_AP_peak`` and ``_peak_epoch``: the highest validation AP and the (first) epoch of it;
      ``_final``: the AP of the last evaluated epoch;
    - ``val_loss_min`` and ``val_loss_min_epoch``: the lowest validation loss and the (first) epoch of it;
      ``val_loss_final``: the last one; ``val_loss_rise``: final minus minimum (>= 0; how far the
      validation loss has climbed back since its minimum, without involving the training loss);
    - ``gap_final``: validation minus training loss (the ``gap_training`` group, see
      :func:`gap_training_key`) at the last epoch that logged both.
    """
    out: dict[str, float | None] = dict.fromkeys(OUTCOME_KEYS)
    for prefix, path in (("segm_AP", "segm.AP"), ("bbox_AP", "bbox.AP")):
        epochs, values = epoch_series(run, path)
        if values.size:
            best = int(np.argmax(values))
            out[f"{prefix}_peak"], out[f"{prefix}_peak_epoch"] = float(values[best]), float(epochs[best])
            out[f"{prefix}_final"] = float(values[-1])
    epochs, losses = epoch_series(run, "val.loss")
    if losses.size:
        lowest = int(np.argmin(losses))
        out["val_loss_min"], out["val_loss_min_epoch"] = float(losses[lowest]), float(epochs[lowest])
        out["val_loss_final"] = float(losses[-1])
        out["val_loss_rise"] = float(losses[-1] - losses[lowest])
    _, gaps = gap_series(run, gap_training)
    if gaps.size:
        out["gap_final"] = float(gaps[-1])
    return out


def compute_seconds(runs: Sequence[Run]) -> tuple[float, float]:
    """``(training, evaluation)`` seconds of ``runs``: the sums of their epoch records' ``train_time`` and
    ``eval_time`` (finished epochs only; a record without one counts 0)."""
    train = sum(_nested(r, "train_time") or 0.0 for run in runs for r in run.epochs)
    evaluation = sum(_nested(r, "eval_time") or 0.0 for run in runs for r in run.epochs)
    return float(train), float(evaluation)


def final_epoch(arms: Sequence[Arm]) -> int | None:
    """The last epoch that every run of every arm has finished, over the runs that have finished one
    (a run that has just started would otherwise hide every other run's values); ``None`` if none has."""
    lasts = [run.epochs[-1]["epoch"] for arm in arms for run in arm.runs if run.epochs]
    return min(lasts) if lasts else None


def final_values(arm: Arm, path: str, epoch: int) -> tuple[list[float], list[Any]]:
    """Values of a dotted epoch key at ``epoch`` for each run of the arm that has it, and their seeds."""
    values, seeds = [], []
    for run in arm.runs:
        record = next((r for r in run.epochs if r["epoch"] == epoch), None)
        value = None if record is None else _nested(record, path)
        if value is not None:
            values.append(value)
            seeds.append(run.seed)
    return values, seeds
