"""Training the arms of a study: the sweep grid and one ``python -m fnoise_maskrcnn.train`` process per run.

Each run is a subprocess of the ``train`` command (this module imports no command module), resumable:
finished runs are kept and interrupted ones resumed from their ``last.pth``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runs import (
    RunError,
    check_seed_precisions,
    epoch_records,
    load_run,
    logged_final_epoch,
    planned_epochs,
)

__all__ = [
    "STUDY_TRAIN_FLAGS",
    "PER_RUN_FLAGS",
    "ArmSpec",
    "parse_sweep",
    "SeedPlan",
    "plan_seeds",
    "study_arms",
    "study_flags_error",
    "train_arms",
]

#: Training flags of ``--train`` before the user's own (which override them). The rest comes from
#: ``train``'s default recipe (``synthetic``: ResNet-50 with GroupNorm from scratch, 160 px, 3 epochs of
#: 400 images). One data-loading process keeps resuming bit-exact; the clean training loss on 64
#: training images gives the overfitting gap without F-Noise's bias.
STUDY_TRAIN_FLAGS = ("--workers", "0", "--print-freq", "10", "--train-loss-images", "64")

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


#: Training flags that compare sets for each run itself (``--f-noise`` it adds to the F-Noise arms).
PER_RUN_FLAGS = ("--seed", "--output-dir", "--resume", "--test-only", "--device")
#: Training settings a sweep may not vary: those compare sets for each run.
_UNSWEEPABLE = ("seed", "output_dir", "resume", "f_noise", "device")


def study_flags_error(
    train_flags: Sequence[str], arms: Sequence[ArmSpec], train_settings: Iterable[str]
) -> str | None:
    """The first problem with a study's training flags as a one-line message, or None when there is none.

    A problem is a flag of :data:`PER_RUN_FLAGS` or ``--f-noise`` among ``train_flags``, or a swept key (in
    an arm's name, see :func:`study_arms`) that is not one of ``train_settings`` (the ``dest`` names of
    train's flags) or is set for each run by the study itself.
    """
    for flag in train_flags:
        name = flag.split("=", 1)[0]
        if name in PER_RUN_FLAGS:
            return f"{name} is set by compare for each run; use --seeds, --output-dir, --devices of compare"
        if name == "--f-noise":
            return "--f-noise is added by compare to the F-Noise arms only; leave it out"
    known = set(train_settings)
    for name, _ in arms:
        for key in (part.split("=", 1)[0] for part in name.split(",") if "=" in part):
            if key not in known or key in _UNSWEEPABLE:
                return f"--sweep {key}: not a training flag compare can sweep"
    return None


def _run_finished(run_dir: Path) -> bool:
    """Whether a run has logged the last epoch its ``config.json`` asks for."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
        epochs = epoch_records(run_dir)
    except (OSError, ValueError):  # RunError is a ValueError
        return False
    wanted = planned_epochs(config) if isinstance(config, dict) else None
    return logged_final_epoch(epochs, wanted)


@dataclass(frozen=True)
class SeedPlan:
    """How the missing runs of one seed train here: with ``flags`` added, or not at all (``skip`` says why).

    A seed is a block whose arms all train in one precision (see
    :func:`~fnoise_maskrcnn.study.runs.group_runs`): the precision of its runs already logged, else what
    ``--amp`` resolves to on this machine.
    """

    flags: tuple[str, ...] = ()
    skip: str | None = None


def plan_seeds(
    output_dir: str | Path, arms: Sequence[ArmSpec], seeds: Sequence[int], precision: str
) -> dict[int, SeedPlan]:
    """Each seed's :class:`SeedPlan` on a machine where ``--amp`` resolves to ``precision``.

    A seed whose runs trained in ``precision`` (or none yet) trains as asked; one whose runs trained in
    float32 gets ``--no-amp``; one whose runs trained in bfloat16 or float16 elsewhere is skipped here
    (emulating bfloat16 on a CPU without its instructions is about 14 times slower).

    Raises:
        RunError: two runs of one seed trained in different precisions.
    """
    output_dir = Path(output_dir)
    plans = {}
    for seed in seeds:
        trained = _seed_precision([output_dir / arm / f"seed{seed}" for arm, _ in arms])
        if trained is None or trained == precision:
            plans[seed] = SeedPlan()
        elif trained == "float32":
            plans[seed] = SeedPlan(flags=("--no-amp",))
        else:
            plans[seed] = SeedPlan(
                skip=f"its other runs trained in {trained}; this machine's --amp gives {precision}"
            )
    return plans


def _seed_precision(run_dirs: Sequence[Path]) -> str | None:
    """The one precision the started runs among ``run_dirs`` trained in; None when none has logged it.

    Raises:
        RunError: two of them trained in different precisions (:func:`check_seed_precisions`).
    """
    runs = []
    for run_dir in run_dirs:
        try:
            runs.append(load_run(run_dir))
        except RunError:  # not started, or nothing logged yet
            continue
    check_seed_precisions(runs)
    return runs[0].precision if runs else None


def train_arms(
    seeds: Sequence[int],
    output_dir: Path,
    train_flags: Sequence[str],
    *,
    defaults: Sequence[str] = STUDY_TRAIN_FLAGS,
    arms: Sequence[ArmSpec] = (("baseline", []), ("fnoise", ["--f-noise"])),
    jobs: int = 1,
    devices: Sequence[str] = (),
    plans: Mapping[int, SeedPlan] | None = None,
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
    once gets ``--device devices[i % len(devices)]``. ``plans`` (see :func:`plan_seeds`) adds flags to a
    seed's runs or leaves its missing runs untrained; the runs returned are those that exist.

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
        plan = (plans or {}).get(seed, SeedPlan())
        if _run_finished(run_dir):
            _say(f"[{number}/{len(queue)}] {arm} seed {seed}: finished before, kept")
            return run_dir
        if plan.skip is not None:
            _say(f"[{number}/{len(queue)}] {arm} seed {seed}: left untrained here: {plan.skip}")
            return run_dir
        device = free_devices.pop(0) if free_devices else None
        try:
            common = [*defaults, *train_flags, *plan.flags]
            _train_one(python, common, flags, arm, seed, run_dir, logs, number, len(queue), device)
        finally:
            if device is not None:
                free_devices.append(device)
        return run_dir

    run_dirs = _map_jobs(one, queue, jobs)
    return [run_dir for run_dir in run_dirs if (run_dir / "config.json").is_file()]


_SAY_LOCK = threading.Lock()


def _say(line: str) -> None:
    """Prints one progress line whole: with ``--jobs N`` the jobs' threads print at once, and ``print``
    writes the text and its newline separately, so unguarded lines ran into each other."""
    with _SAY_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _map_jobs(function: Callable[[Any], Path], items: Sequence[Any], jobs: int) -> list[Path]:
    """``function`` over ``items``, ``jobs`` at a time (in this thread when ``jobs`` is 1), in order."""
    if jobs <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(function, items))


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
    _say(f"[{number}/{total}] {arm} seed {seed} -> {run_dir}{' (resumed)' if resume else ''} (log: {log})")
    start = time.perf_counter()
    with open(log, "a" if resume else "w") as log_file:
        # the command as a reader reruns it: "python", not this machine's interpreter path
        log_file.write(shlex.join(["python", *command[1:]]) + "\n")
        log_file.flush()
        code = subprocess.call(command, stdout=log_file, stderr=subprocess.STDOUT)
    if code != 0:
        tail = [line for line in log.read_text().splitlines() if line.strip()][-1:]
        raise RuntimeError(f"training {arm} seed {seed} failed (exit {code}; see {log}): {''.join(tail)}")
    _say(f"    {arm} seed {seed} done in {time.perf_counter() - start:.0f} s")
