"""Training runs as data: reading run directories, grouping them into arms, statistics over seeds.

A run directory (written by ``python -m fnoise_maskrcnn.train``) holds ``config.json`` and
``metrics.jsonl``. Runs whose configurations agree on everything but the seed (and bookkeeping such
as the output directory) form one *arm*, e.g. "baseline" or "F-Noise σ=0.1 (elementwise, all
levels)"; the runs of an arm are its seeds. This module has no plotting: see
:mod:`fnoise_maskrcnn.compare` for the figure, the tables and the command line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig

__all__ = [
    "LOSS_KEYS",
    "F_NOISE_KEYS",
    "DEFAULT_IGNORED_KEYS",
    "RunError",
    "Run",
    "Arm",
    "Stat",
    "Difference",
    "load_run",
    "epoch_records",
    "planned_epochs",
    "run_complete",
    "gap_series",
    "run_outcomes",
    "OUTCOME_KEYS",
    "compute_seconds",
    "common_seed_difference",
    "group_runs",
    "iteration_series",
    "epoch_series",
    "smooth",
    "final_epoch",
    "final_values",
    "describe",
    "difference",
]

#: The per-iteration and per-epoch log of a run directory (written by :mod:`fnoise_maskrcnn.metrics_log`).
METRICS_FILE = "metrics.jsonl"
#: The total loss first, then the five components of torchvision's Mask R-CNN.
LOSS_KEYS = ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
F_NOISE_KEYS = (
    "f_noise",
    "f_noise_std",
    "f_noise_mode",
    "f_noise_dist",
    "f_noise_preset",
    "f_noise_levels",
    "f_noise_schedule",
    "f_noise_std_end",
    "f_noise_step_epochs",
    "f_noise_warmup_iters",
)
#: config.json keys that never make two runs different arms: the seed, bookkeeping that does not change
#: what is learnt, and ``model_config`` (derived from the flags that are compared themselves).
DEFAULT_IGNORED_KEYS = (
    "seed",
    "output_dir",
    "resume",
    "print_freq",
    "visualize_every",
    "workers",
    "threads",
    "device",
    "test_only",
    "eval_every",
    "model_config",
)


class RunError(ValueError):
    """A run directory is missing, incomplete or malformed (one-line message naming the file)."""


@dataclass
class Run:
    """One training run.

    Attributes:
        path: the run directory.
        config: ``config.json``.
        iterations: the ``"iter"`` records of ``metrics.jsonl``, by increasing ``iteration``.
        epochs: the ``"epoch"`` records, by increasing ``epoch``.
        planned: the number of epochs ``config.json`` asks for (``None`` when it does not say).
    """

    path: Path
    config: dict[str, Any]
    iterations: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    planned: int | None = None

    @property
    def seed(self) -> Any:
        return self.config.get("seed")


@dataclass
class Arm:
    """Runs with the same configuration except the seed.

    Attributes:
        label: e.g. ``"baseline"`` or ``"F-Noise σ=0.1 (elementwise, all levels)"``.
        key: the configuration values that define the arm (F-Noise settings and whatever else differs
            between the compared runs), with F-Noise settings dropped when F-Noise is off.
        runs: the arm's runs, by seed.
    """

    label: str
    key: dict[str, Any]
    runs: list[Run] = field(default_factory=list)

    @property
    def is_baseline(self) -> bool:
        return not self.key.get("f_noise")

    @property
    def seeds(self) -> list[Any]:
        return [run.seed for run in self.runs]


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (``ddof=1``; ``None`` for one value) of ``values`` over seeds."""

    mean: float
    std: float | None
    n: int
    values: tuple[float, ...]
    seeds: tuple[Any, ...]


@dataclass(frozen=True)
class Difference:
    """``arm - reference`` for one metric, with its uncertainty from seed to seed.

    Attributes:
        mean: difference of the means.
        std: spread of the difference: for paired seeds the sample std of the per-seed differences,
            otherwise ``sqrt(s1^2 + s2^2)`` scaled so that ``std / sqrt(n)`` is the standard error.
        stderr: standard error of ``mean`` (``None`` when a side has a single seed).
        ci95: 95% confidence interval from Student's t (``None`` when ``stderr`` is ``None``).
        paired: whether the same seeds were compared pairwise (same initial weights and data order).
        n: number of pairs (paired) or ``min(n1, n2)``.
        verdict: ``"within seed noise"``, ``"beyond seed noise"`` or ``"seed noise unknown (one seed)"``.
        df: degrees of freedom of the t statistic (``None`` with a single seed).
        p: two-sided p-value of "no difference" from Student's t (``None`` with a single seed).
    """

    mean: float
    std: float | None
    stderr: float | None
    ci95: tuple[float, float] | None
    paired: bool
    n: int
    verdict: str
    df: float | None = None
    p: float | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise RunError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc


def _metrics_records(metrics_file: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, decoded record)`` of each non-blank line of a ``metrics.jsonl``.

    An incomplete last line (no newline after it: the run is writing it right now) is left out.

    Raises:
        RunError: the file cannot be read, or a complete line is not valid JSON.
    """
    try:
        text = metrics_file.read_text()
    except OSError as exc:
        raise RunError(f"{metrics_file}: cannot be read ({exc.strerror or exc})") from exc
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                return  # the run is writing this line right now
            raise RunError(f"{metrics_file}:{number}: not valid JSON ({exc.msg})") from exc
        yield number, record


def epoch_records(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The ``"epoch"`` records of ``run_dir/metrics.jsonl`` in file order: one per finished epoch.

    No ``metrics.jsonl`` means no finished epoch (``[]``); an incomplete last line is left out.

    Raises:
        RunError: the file cannot be read, or a complete line is not valid JSON.
    """
    metrics_file = Path(run_dir) / METRICS_FILE
    if not metrics_file.is_file():
        return []
    return [
        record
        for _, record in _metrics_records(metrics_file)
        if isinstance(record, dict) and record.get("type") == "epoch"
    ]


def planned_epochs(config: Mapping[str, Any]) -> int | None:
    """The epochs a raw ``config.json`` asks for: ``optim.epochs`` (nested form) or ``epochs`` (the flat form
    of earlier versions); ``None`` when it does not say."""
    optim = config.get("optim")
    value = optim.get("epochs") if isinstance(optim, Mapping) else config.get("epochs")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def load_run(path: Path) -> Run:
    """Reads a run directory's ``config.json`` and ``metrics.jsonl``.

    An incomplete last line (a run still being written) is ignored; any other malformed line is an error.

    Raises:
        RunError: the directory or a file is missing, or a file is malformed (message names the file).
    """
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: not a run directory (no such directory)")
    config_file, metrics_file = path / "config.json", path / METRICS_FILE
    for required in (config_file, metrics_file):
        if not required.is_file():
            raise RunError(f"{required}: missing (is {path} a run directory of fnoise_maskrcnn.train?)")
    config = _read_json(config_file)
    if not isinstance(config, dict):
        raise RunError(f"{config_file}: expected a JSON object")
    planned = planned_epochs(config)
    try:  # one shape for every version's config.json: the configuration object's flags
        config = TrainConfig.read(config).flags()
    except (TypeError, ValueError) as exc:
        raise RunError(f"{config_file}: not a training configuration ({exc})") from None
    iterations, epochs = [], []
    for number, record in _metrics_records(metrics_file):
        kind = record.get("type") if isinstance(record, dict) else None
        if kind == "iter":
            valid = isinstance(record.get("iteration"), int) and isinstance(record.get("loss"), (int, float))
            if not valid:
                raise RunError(
                    f"{metrics_file}:{number}: an 'iter' record needs an integer 'iteration' and a 'loss'"
                )
            iterations.append(record)
        elif kind == "epoch":
            if not isinstance(record.get("epoch"), int):
                raise RunError(f"{metrics_file}:{number}: an 'epoch' record needs an integer 'epoch'")
            epochs.append(record)
        elif kind != "run":
            raise RunError(f"{metrics_file}:{number}: expected a record with 'type' 'iter', 'epoch' or 'run'")
    iterations.sort(key=lambda r: r["iteration"])
    epochs.sort(key=lambda r: r["epoch"])
    return Run(path, config, iterations, epochs, planned)


def run_complete(run: Run) -> bool:
    """Whether a run has logged all the epochs its ``config.json`` asks for (at least one when it does not
    say); a run that has not is still in progress (or was interrupted) and has no final values yet."""
    return len(run.epochs) >= 1 and (run.planned is None or len(run.epochs) >= run.planned)


def _arm_config(config: Mapping[str, Any], ignored: Iterable[str]) -> dict[str, Any]:
    """The configuration that matters for grouping: ignored keys removed, F-Noise settings only if on."""
    ignored = set(ignored)
    kept = {k: v for k, v in config.items() if k not in ignored}
    kept["f_noise"] = bool(config.get("f_noise", False))
    if not kept["f_noise"]:
        for key in F_NOISE_KEYS[1:]:
            kept.pop(key, None)
    return kept


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def sigma_of(std: Any) -> float:
    """A run's ``f_noise_std`` as one number: itself, or the largest of its per-level sigmas (0 if unset)."""
    if isinstance(std, dict):
        return max((float(v) for v in std.values()), default=0.0)
    return float(std or 0.0)


def _label(key: Mapping[str, Any]) -> str:
    if key.get("f_noise"):
        levels = key.get("f_noise_levels")
        if not levels:
            where = "all levels"
        else:
            where = ("level " if len(levels) == 1 else "levels ") + ", ".join(str(level) for level in levels)
        std = key.get("f_noise_std")
        if isinstance(std, dict):
            sigma = "{" + ", ".join(f"{level}: {float(value):g}" for level, value in std.items()) + "}"
        else:
            sigma = "?" if std is None else f"{float(std):g}"
        form = key.get("f_noise_mode", "elementwise")
        if key.get("f_noise_dist", "gaussian") != "gaussian":
            form += f", {key['f_noise_dist']}"
        if key.get("f_noise_schedule", "constant") != "constant":
            form += f", {key['f_noise_schedule']} to {_format_value(key.get('f_noise_std_end'))}"
        if key.get("f_noise_warmup_iters"):
            form += f", warm-up {key['f_noise_warmup_iters']} it"
        label = f"F-Noise σ={sigma} ({form}, {where})"
    else:
        label = "baseline"
    others = [f"{k}={_format_value(v)}" for k, v in key.items() if k not in F_NOISE_KEYS]
    return ", ".join([label, *others])


def group_runs(runs: Sequence[Run], ignored_keys: Iterable[str] = DEFAULT_IGNORED_KEYS) -> list[Arm]:
    """Groups runs into arms by configuration; baseline arms first, then F-Noise arms by sigma.

    An arm's key holds the F-Noise settings and every other configuration value that differs between
    the given runs (keys in ``ignored_keys`` never count).

    Raises:
        RunError: two runs of the same arm have the same seed (they would not be independent samples).
    """
    ignored = set(ignored_keys)
    configs = [_arm_config(run.config, ignored) for run in runs]
    all_keys = sorted({k for config in configs for k in config})
    varying = [
        k
        for k in all_keys
        if k not in F_NOISE_KEYS and len({_canonical(config.get(k)) for config in configs}) > 1
    ]
    arms: dict[str, Arm] = {}
    for run, config in zip(runs, configs):
        key = {k: config[k] for k in F_NOISE_KEYS if k in config}
        key.update({k: config.get(k) for k in varying})
        identity = _canonical(key)
        arm = arms.setdefault(identity, Arm(_label(key), key))
        for other in arm.runs:
            if _canonical(other.seed) == _canonical(run.seed):
                raise RunError(
                    f"{run.path}: same arm ({arm.label}) and seed ({run.seed}) as {other.path}; "
                    "pass only one of them"
                )
        arm.runs.append(run)
    for arm in arms.values():
        arm.runs.sort(key=lambda r: _canonical(r.seed))

    def order(arm: Arm) -> tuple:
        std = sigma_of(arm.key.get("f_noise_std")) if arm.key.get("f_noise") else -1.0
        return (not arm.is_baseline, std, arm.label)

    return sorted(arms.values(), key=order)


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


def gap_series(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, validation loss - training loss)`` at the epochs that logged both (the evaluated ones)."""
    points: list[tuple[int, float | None]] = []
    for record in run.epochs:
        val, train = _nested(record, "val.loss"), _nested(record, "train.loss")
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


def run_outcomes(run: Run) -> dict[str, float | None]:
    """A run's whole-course numbers, over its evaluated epochs (``None`` where it logged none):

    - ``{segm,bbox}_AP_peak`` and ``_peak_epoch``: the highest validation AP and the (first) epoch of it;
      ``_final``: the AP of the last evaluated epoch;
    - ``val_loss_min`` and ``val_loss_min_epoch``: the lowest validation loss and the (first) epoch of it;
      ``val_loss_final``: the last one; ``val_loss_rise``: final minus minimum (>= 0; how far the
      validation loss has climbed back since its minimum, without involving the training loss);
    - ``gap_final``: validation minus training loss at the last epoch that logged both.
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
    _, gaps = gap_series(run)
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
    """The last epoch that every run of every arm has finished (``None`` if some run has no epoch yet)."""
    lasts = [run.epochs[-1]["epoch"] if run.epochs else None for arm in arms for run in arm.runs]
    if not lasts or any(last is None for last in lasts):
        return None
    return min(lasts)


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


def describe(values: Sequence[float], seeds: Sequence[Any] = ()) -> Stat | None:
    """Mean and sample std of ``values`` (``None`` when empty)."""
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else None
    return Stat(float(array.mean()), std, int(array.size), tuple(float(v) for v in array), tuple(seeds))


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's 1.96).
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def _t975(df: float) -> float:
    if df < 1:
        return _T975[0]
    if df > len(_T975):
        return 1.96
    return _T975[int(math.floor(df)) - 1]  # rounding df down is conservative


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz's method)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return result


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value ``P(|T| >= |t|)`` of Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (family-wise error rate), in the input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def difference(arm: Stat, reference: Stat) -> Difference:
    """``arm - reference`` with a 95% confidence interval over seeds.

    When both sides have the same seeds (the study's design: same seed, same initial weights and data
    order), the per-seed differences are used (paired); otherwise Welch's unpaired interval.
    """
    seeds, reference_seeds = sorted(map(str, arm.seeds)), sorted(map(str, reference.seeds))
    paired = bool(seeds) and seeds == reference_seeds and len(set(seeds)) == len(seeds) == arm.n
    if paired:
        by_seed = dict(zip(map(str, reference.seeds), reference.values))
        diffs = np.array([v - by_seed[str(s)] for s, v in zip(arm.seeds, arm.values)])
        mean, n = float(diffs.mean()), int(diffs.size)
        if n < 2:
            return Difference(mean, None, None, None, True, n, "seed noise unknown (one seed)")
        std = float(diffs.std(ddof=1))
        stderr = std / math.sqrt(n)
        df = float(n - 1)
    else:
        mean, n = arm.mean - reference.mean, min(arm.n, reference.n)
        if arm.std is None or reference.std is None:
            return Difference(mean, None, None, None, False, n, "seed noise unknown (one seed)")
        va, vr = arm.std**2 / arm.n, reference.std**2 / reference.n
        stderr = math.sqrt(va + vr)
        std = stderr * math.sqrt(n)
        denominator = (va**2 / (arm.n - 1) if va else 0.0) + (vr**2 / (reference.n - 1) if vr else 0.0)
        df = (va + vr) ** 2 / denominator if denominator > 0 else float(arm.n + reference.n - 2)
    half = _t975(df) * stderr
    ci = (mean - half, mean + half)
    verdict = "within seed noise" if ci[0] <= 0.0 <= ci[1] else "beyond seed noise"
    p = t_two_sided_p(mean / stderr, df) if stderr > 0 else (1.0 if mean == 0 else 0.0)
    return Difference(mean, std, stderr, ci, paired, n, verdict, df, p)


def _only_seeds(stat: Stat, seeds: set[str]) -> Stat:
    kept = [(v, s) for v, s in zip(stat.values, stat.seeds) if str(s) in seeds]
    result = describe([v for v, _ in kept], [s for _, s in kept])
    assert result is not None  # seeds are a non-empty subset of stat's
    return result


def common_seed_difference(arm: Stat, reference: Stat) -> Difference:
    """``arm - reference`` paired over the seeds both sides have (a seed complete on one side only is left
    out); unpaired (Welch) when they share no seed. See :func:`difference`."""
    common = {str(s) for s in arm.seeds} & {str(s) for s in reference.seeds}
    if not common:
        return difference(arm, reference)
    return difference(_only_seeds(arm, common), _only_seeds(reference, common))
