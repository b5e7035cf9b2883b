"""benchmarks/_timing.py: interleaved, rotated rounds with untimed warm-up, and paired median ratios."""

from __future__ import annotations

import pytest

from _scripts import load_script


@pytest.fixture(scope="module")
def timing():
    return load_script("benchmarks/_timing.py")


def test_rounds_rotate_the_order_and_skip_the_warm_up(timing, capsys):
    calls: list[str] = []
    jobs = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    seconds = timing.interleaved_seconds(jobs, rounds=3, warmup=1)
    assert "".join(calls) == "abc" + "bca" + "cab" + "abc"  # warm-up round, then three timed rounds
    assert {name: len(s) for name, s in seconds.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for s in seconds.values() for t in s)
    printed = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in printed] == ["round 1", "round 2", "round 3"]


def test_median_ratio_pairs_rounds(timing):
    assert timing.median_ratio([2.0, 9.0, 3.0], [1.0, 3.0, 3.0]) == 2.0  # per round 2, 3, 1
    with pytest.raises(ValueError):
        timing.median_ratio([1.0, 2.0], [1.0])
