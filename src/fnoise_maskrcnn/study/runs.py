"""Training runs as data: reading run directories and grouping them into arms.

A run directory (written by ``python -m fnoise_maskrcnn.train``) holds ``config.json`` and
``metrics.jsonl``. Runs whose configurations agree on everything but the seed (and bookkeeping such
as the output directory) form one *arm*, e.g. "baseline" or "F-Noise σ=0.1 (elementwise, all
levels)"; the runs of an arm are its seeds. The numbers of a run are in :mod:`.series`, statistics over
seeds in :mod:`.stats`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig

__all__ = [
    "METRICS_FILE",
    "LOSS_KEYS",
    "F_NOISE_KEYS",
    "DEFAULT_IGNORED_KEYS",
    "RunError",
    "Run",
    "Arm",
    "load_run",
    "epoch_records",
    "planned_epochs",
    "run_complete",
    "group_runs",
    "check_seed_precisions",
    "sigma_of",
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
#: what is learnt (``train_loss_images`` only adds a measurement pass with F-Noise off;
#: ``checkpoint_every`` only how often ``last.pth`` is saved, and resuming keeps data order and random
#: streams), ``model_config`` (derived from the flags that are compared themselves) and ``amp``: the
#: precision it resolved to is a property of the seed, shared by all its arms (see :func:`group_runs`),
#: not of an arm.
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
    "train_loss_images",
    "checkpoint_every",
    "model_config",
    "amp",
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
        precision: what ``--amp`` resolved to: ``"float16"``, ``"bfloat16"`` or ``"float32"`` (the
            ``"run"`` record says it; for runs that predate that record, what ``--amp`` always meant
            then: float16 on CUDA, else bfloat16). Every arm of a seed trains in one precision.
        processors: the processor models its sessions trained on (the ``"run"`` records' ``processor``),
            in order of first use; empty for runs that predate that field.
    """

    path: Path
    config: dict[str, Any]
    iterations: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    planned: int | None = None
    precision: str | None = None
    processors: tuple[str, ...] = ()

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
    iterations, epochs, precisions, processors = [], [], [], []
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
        elif kind == "run":
            precisions.append(_precision(config, record))
            if record.get("processor"):
                processors.append(str(record["processor"]))
        else:
            raise RunError(f"{metrics_file}:{number}: expected a record with 'type' 'iter', 'epoch' or 'run'")
    iterations.sort(key=lambda r: r["iteration"])
    epochs.sort(key=lambda r: r["epoch"])
    if len(set(precisions)) > 1:
        raise RunError(
            f"{metrics_file}: the run was resumed in another precision ({' then '.join(precisions)}), so its "
            "results mix both; train it again"
        )
    precision = precisions[-1] if precisions else _precision(config, {})
    return Run(path, config, iterations, epochs, planned, precision, tuple(dict.fromkeys(processors)))


def _precision(config: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
    """The run's precision: its last ``"run"`` record's, else what ``--amp`` meant before it was recorded."""
    if facts.get("precision"):
        return str(facts["precision"])
    if not config.get("amp"):
        return "float32"
    device = str(facts.get("device") or config.get("device") or "")
    return "float16" if device.startswith("cuda") else "bfloat16"


def logged_final_epoch(epochs: Sequence[Mapping[str, Any]], planned: int | None) -> bool:
    """Whether epoch records reach the last epoch of ``planned`` (any epoch when ``planned`` is None).

    The last epoch decides, not the count. Before ``train`` marked an epoch's evaluation as pending in the
    checkpoint it saves first (commit ``e56fef0``), a kill during that evaluation lost the epoch's record
    for good; such a run is still finished once its final epoch is logged.
    """
    numbers = [r["epoch"] for r in epochs if isinstance(r.get("epoch"), int)]
    return bool(numbers) and (planned is None or max(numbers) + 1 >= planned)


def run_complete(run: Run) -> bool:
    """Whether a run has logged the last epoch its ``config.json`` asks for (any epoch when it does not
    say; see :func:`logged_final_epoch`); a run that has not is still in progress (or was interrupted) and
    has no final values yet."""
    return logged_final_epoch(run.epochs, run.planned)


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
        preset = f"; preset {key['f_noise_preset']}" if key.get("f_noise_preset") else ""
        label = f"F-Noise σ={sigma} ({form}, {where}{preset})"
    else:
        label = "baseline"
    others = [f"{k}={_format_value(v)}" for k, v in key.items() if k not in F_NOISE_KEYS]
    return ", ".join([label, *others])


def check_seed_precisions(runs: Sequence[Run]) -> None:
    """Raises RunError when two runs of one seed trained in different precisions."""
    first: dict[str, Run] = {}
    for run in runs:
        other = first.setdefault(_canonical(run.seed), run)
        if other.precision != run.precision:
            raise RunError(
                f"{run.path}: trained in {run.precision}, but {other.path} of the same seed ({run.seed}) in "
                f"{other.precision}; every arm of a seed must train in one precision to be paired"
            )


def group_runs(runs: Sequence[Run], ignored_keys: Iterable[str] = DEFAULT_IGNORED_KEYS) -> list[Arm]:
    """Groups runs into arms by configuration; baseline arms first, then F-Noise arms by sigma.

    An arm's key holds the F-Noise settings and every other configuration value that differs between
    the given runs (keys in ``ignored_keys`` never count).

    A seed is a block: the same initial weights and data order in every arm, and one precision (what
    ``--amp`` resolved to). Paired differences then compare like with like, and a study may hold seeds of
    different precisions (some trained where the CPU has bfloat16 instructions, some where it does not).

    Raises:
        RunError: two runs of the same arm have the same seed (they would not be independent samples), or
            two runs of one seed trained in different precisions.
    """
    check_seed_precisions(runs)
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
