"""Timing several variants fairly on a busy machine: interleaved rounds and per-round ratios."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence


def interleaved_seconds(
    jobs: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1, label: str = "round"
) -> dict[str, list[float]]:
    """Seconds of one call of each job per timed round, after ``warmup`` untimed rounds.

    Every round calls every job once, the order rotated by one from round to round, so that load from
    other processes and what runs just before fall on all jobs alike. Each timed round is printed to
    stderr as it ends, so an interrupted benchmark still shows its rounds.
    """
    names = list(jobs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            jobs[name]()
            if r >= warmup:
                seconds[name].append(time.perf_counter() - start)
        if r >= warmup:
            line = ", ".join(f"{name} {s[-1]:.3f} s" for name, s in seconds.items())
            print(f"{label} {r - warmup + 1}: {line}", file=sys.stderr, flush=True)
    return seconds


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median of the per-round ratios ``numerator[r] / denominator[r]`` (paired by round)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))
