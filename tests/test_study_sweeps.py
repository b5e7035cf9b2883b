"""compare's study design: sweeps over train flags, Holm-corrected differences, resumable studies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import write_fake_python
from fnoise_maskrcnn.compare import (
    _final_ap_points,
    _run_finished,
    main,
    parse_sweep,
    study_arms,
    summarize,
    train_arms,
)
from fnoise_maskrcnn.study import RunError, epoch_records, group_runs, holm, load_run, t_two_sided_p

#: A stand-in for ``python``: writes a 2-epoch run whose segm AP depends on seed and sigma; --resume
#: completes a run that has one epoch. Every call is appended to calls.jsonl beside the study.
FAKE_TRAIN = """\
import json, sys
from pathlib import Path
argv = sys.argv[1:]
out = Path(argv[argv.index("--output-dir") + 1])
seed = int(argv[argv.index("--seed") + 1])
std = float(argv[argv.index("--f-noise-std") + 1]) if "--f-noise-std" in argv else 0.1
noise = "--f-noise" in argv
with open(out.parents[1] / "calls.jsonl", "a") as calls:
    calls.write(json.dumps(argv) + "\\n")
out.mkdir(parents=True, exist_ok=True)
config = {"seed": seed, "output_dir": str(out), "f_noise": noise, "f_noise_std": std, "epochs": 2,
          "f_noise_mode": "elementwise", "f_noise_levels": None}
(out / "config.json").write_text(json.dumps(config))
ap = 0.3 + 0.01 * seed + (0.1 * std if noise else 0.0)
records = [{"type": "epoch", "epoch": e, "iteration": e + 1, "train": {"loss": 1.0}, "val": {"loss": 1.0 -
ap},
            "bbox": {"AP": ap}, "segm": {"AP": ap + 0.01 * e}, "f_noise_nsr": None} for e in range(2)]
(out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in records))
(out / "last.pth").write_bytes(b"checkpoint")
"""


@pytest.fixture
def fake_python(tmp_path) -> str:
    return write_fake_python(tmp_path, FAKE_TRAIN)


def test_parse_sweep_and_arms():
    assert parse_sweep("f-noise-std=0.05, 0.1") == ("f_noise_std", ["0.05", "0.1"])
    with pytest.raises(Exception, match="KEY=V1,V2"):
        parse_sweep("f_noise_std")
    arms = study_arms([("f_noise_std", ["0.1", "0.2"]), ("f_noise_levels", ["0 1", "3"])])
    assert [name for name, _ in arms] == [
        "baseline",
        "f_noise_std=0.1,f_noise_levels=0+1",
        "f_noise_std=0.1,f_noise_levels=3",
        "f_noise_std=0.2,f_noise_levels=0+1",
        "f_noise_std=0.2,f_noise_levels=3",
    ]
    assert arms[1][1] == ["--f-noise", "--f-noise-std", "0.1", "--f-noise-levels", "0", "1"]
    assert study_arms([], baseline=False) == [("fnoise", ["--f-noise"])]


def test_sweep_of_two_values_and_two_seeds_gives_three_arms_and_the_ap_panel(fake_python, tmp_path):
    study = tmp_path / "study"
    arms = study_arms([("f_noise_std", ["0.1", "0.2"])])
    run_dirs = train_arms([0, 1], study, [], defaults=(), arms=arms, python=fake_python)
    assert len(run_dirs) == 6 and len({d.parent.name for d in run_dirs}) == 3
    grouped = group_runs([load_run(d) for d in run_dirs])
    assert [(arm.label, arm.seeds) for arm in grouped] == [
        ("baseline", [0, 1]),
        ("F-Noise σ=0.1 (elementwise, all levels)", [0, 1]),
        ("F-Noise σ=0.2 (elementwise, all levels)", [0, 1]),
    ]
    xs, ticks, values, title = _final_ap_points(grouped)
    assert xs == [0.0, 0.1, 0.2] and title.startswith("F-Noise σ")
    assert values[2] == pytest.approx([0.3 + 0.02 + 0.01, 0.31 + 0.02 + 0.01])
    out = tmp_path / "cmp.png"
    assert main([*map(str, run_dirs), "--out", str(out)]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["correction"] == "holm" and out.stat().st_size > 10_000
    assert "Holm-adjusted" in out.with_suffix(".md").read_text()


def _write_run(path: Path, seed: int, noise: bool, std: float, segm_ap: float) -> Path:
    path.mkdir(parents=True)
    config = {"seed": seed, "f_noise": noise, "f_noise_std": std, "f_noise_mode": "elementwise", "epochs": 1}
    (path / "config.json").write_text(json.dumps(config))
    record = {
        "type": "epoch",
        "epoch": 0,
        "iteration": 1,
        "train": {"loss": 1.0},
        "val": {"loss": 1.0},
        "bbox": {"AP": segm_ap},
        "segm": {"AP": segm_ap},
        "f_noise_nsr": None,
    }
    (path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    return path


def test_paired_differences_and_holm_match_hand_computation(tmp_path):
    base = [0.30, 0.32, 0.34]
    runs = [_write_run(tmp_path / f"b{s}", s, False, 0.1, v) for s, v in enumerate(base)]
    runs += [
        _write_run(tmp_path / f"x{s}", s, True, 0.1, v + d)
        for s, (v, d) in enumerate(zip(base, [0.01, 0.02, 0.03]))
    ]
    runs += [
        _write_run(tmp_path / f"y{s}", s, True, 0.2, v + d)
        for s, (v, d) in enumerate(zip(base, [0.05, 0.06, 0.07]))
    ]
    summary = summarize(group_runs([load_run(r) for r in runs]))
    segm = {d["arm"]: d for d in summary["differences"] if d["metric"] == "segm_AP"}
    small, large = (
        segm["F-Noise σ=0.1 (elementwise, all levels)"],
        segm["F-Noise σ=0.2 (elementwise, all levels)"],
    )
    # by hand: diffs 0.01/0.02/0.03 -> mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt 3) = 2 sqrt 3, df 2;
    # Student's t with 2 df: two-sided p = 1 - t / sqrt(t^2 + 2)
    t_small, t_large = 0.02 / (0.01 / math.sqrt(3)), 0.06 / (0.01 / math.sqrt(3))
    p_small, p_large = 1 - t_small / math.sqrt(t_small**2 + 2), 1 - t_large / math.sqrt(t_large**2 + 2)
    assert (p_small, p_large) == pytest.approx((0.0741799, 0.0091326), abs=1e-6)
    assert small["mean"] == pytest.approx(0.02) and small["p"] == pytest.approx(p_small, rel=1e-6)
    assert small["ci95"] == pytest.approx(
        [0.02 - 4.303 * 0.01 / math.sqrt(3), 0.02 + 4.303 * 0.01 / math.sqrt(3)]
    )
    assert large["p"] == pytest.approx(p_large, rel=1e-6)
    assert large["p_holm"] == pytest.approx(2 * p_large) and small["p_holm"] == pytest.approx(p_small)
    assert large["verdict"] == "beyond seed noise (Holm)" and small["verdict"] == "within seed noise (Holm)"
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert t_two_sided_p(2.571, 5) == pytest.approx(0.05, abs=1e-4)


def test_rerun_keeps_finished_runs_resumes_interrupted_ones_and_trains_the_rest(fake_python, tmp_path):
    arms = study_arms([])
    complete = tmp_path / "complete"
    train_arms([0, 1], complete, [], defaults=(), arms=arms, python=fake_python)

    study = tmp_path / "study"
    train_arms([0], study, [], defaults=(), arms=arms, python=fake_python)  # seed 0 finished
    finished = (study / "baseline" / "seed0" / "metrics.jsonl").stat().st_mtime_ns
    interrupted = study / "baseline" / "seed1"  # killed after its first epoch: a checkpoint, one epoch logged
    interrupted.mkdir(parents=True)
    (interrupted / "last.pth").write_bytes(b"checkpoint")
    (interrupted / "config.json").write_text(json.dumps({"seed": 1, "epochs": 2, "f_noise": False}))
    (interrupted / "metrics.jsonl").write_text(json.dumps({"type": "epoch", "epoch": 0}) + "\n")
    (study / "calls.jsonl").unlink()

    run_dirs = train_arms([0, 1], study, [], defaults=(), arms=arms, python=fake_python)
    calls = [json.loads(line) for line in (study / "calls.jsonl").read_text().splitlines()]
    assert [(c[c.index("--output-dir") + 1], "--resume" in c) for c in calls] == [
        (str(interrupted), True),
        (str(study / "fnoise" / "seed1"), False),
    ]
    assert (study / "baseline" / "seed0" / "metrics.jsonl").stat().st_mtime_ns == finished
    rerun = summarize(group_runs([load_run(d) for d in run_dirs]))
    fresh = summarize(group_runs([load_run(d) for d in complete.glob("*/seed*")]))
    assert [a["metrics"] for a in rerun["arms"]] == [a["metrics"] for a in fresh["arms"]]


def test_epoch_records_count_finished_epochs_only(tmp_path):
    """compare's "finished before" check and the time-to-accuracy benchmark count epochs through this."""
    assert epoch_records(tmp_path) == [] and not _run_finished(tmp_path)  # nothing logged yet
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 2}))
    records = [{"type": "iter", "iteration": 0, "loss": 1.0}, {"type": "epoch", "epoch": 0}]
    records += [{"type": "iter", "iteration": 1, "loss": 1.0}, {"type": "epoch", "epoch": 1}]
    text = "".join(json.dumps(r) + "\n" for r in records)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(text[: text.rindex('{"type": "epoch"') + 20])  # killed while writing epoch 1
    assert [r["epoch"] for r in epoch_records(tmp_path)] == [0] and not _run_finished(tmp_path)
    metrics.write_text(text + "\n")
    assert [r["epoch"] for r in epoch_records(tmp_path)] == [0, 1] and _run_finished(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 3}))
    assert not _run_finished(tmp_path)
    metrics.write_text('{"type": "epoch", "epoch": 0}\n{"type": \n{"type": "epoch", "epoch": 1}\n')
    with pytest.raises(RunError, match=r"metrics.jsonl:2: not valid JSON"):
        epoch_records(tmp_path)
    assert not _run_finished(tmp_path)
