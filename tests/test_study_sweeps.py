"""compare's study design: sweeps over train flags, Holm-corrected differences, resumable studies."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from conftest import write_fake_python
from fnoise_maskrcnn.compare import main
from fnoise_maskrcnn.study import (
    RunError,
    common_seed_difference,
    describe,
    difference,
    epoch_records,
    group_runs,
    holm,
    load_run,
    parse_sweep,
    planned_epochs,
    study_arms,
    summarize,
    summary_markdown,
    t_two_sided_p,
    train_arms,
)
from fnoise_maskrcnn.study.arms import _run_finished, study_flags_error
from fnoise_maskrcnn.study.plots import (
    TICK_WIDTH,
    TITLE_WIDTH,
    _final_ap_points,
    _panel_rows,
    paired_ap_differences,
    plot_comparison,
    wrap_label,
)
from fnoise_maskrcnn.study.stats import seed_differences

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


def test_study_flags_error_names_the_first_flag_compare_sets_itself():
    settings = ["f_noise_std", "epochs", "seed", "device"]
    arms = study_arms([("f_noise_std", ["0.1"])])
    assert study_flags_error(["--epochs", "2"], arms, settings) is None
    assert study_flags_error(["--seed=3"], arms, settings).startswith("--seed is set by compare")
    assert "leave it out" in study_flags_error(["--f-noise"], arms, settings)
    unknown = study_arms([("lr_typo", ["1"])])
    assert (
        study_flags_error([], unknown, settings) == "--sweep lr_typo: not a training flag compare can sweep"
    )
    reserved = study_arms([("device", ["cpu"])])
    assert (
        study_flags_error([], reserved, settings) == "--sweep device: not a training flag compare can sweep"
    )


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
    points = _final_ap_points(grouped)
    xs, values, seeds = points.xs, points.values, points.seeds
    assert xs == [0.0, 0.1, 0.2] and points.x_title.startswith("F-Noise σ") and seeds == [[0, 1]] * 3
    assert points.quantity == "final segm AP" and points.note == ""
    assert values[2] == pytest.approx([0.3 + 0.02 + 0.01, 0.31 + 0.02 + 0.01])
    differences = paired_ap_differences(grouped, values, seeds)  # AP points, seed by seed
    assert differences[0] is None
    assert differences[1] == pytest.approx([1.0, 1.0]) and differences[2] == pytest.approx([2.0, 2.0])
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


def test_long_arm_labels_wrap_in_column_titles_and_ticks_and_keep_every_word(tmp_path):
    presets = {
        "gaussian-dropout": {"f_noise_std": 0.1},
        "deepmirror-uniform": {"f_noise_std": 0.11547, "f_noise_dist": "uniform"},
    }
    runs = []
    for seed in range(2):
        runs.append(_write_run(tmp_path / f"b{seed}", seed, False, 0.1, 0.30 + 0.01 * seed))
        for preset, flags in presets.items():
            run = _write_run(
                tmp_path / f"{preset}{seed}", seed, True, flags["f_noise_std"], 0.31 + 0.01 * seed
            )
            config = json.loads((run / "config.json").read_text())
            (run / "config.json").write_text(json.dumps({**config, **flags, "f_noise_preset": preset}))
            runs.append(run)
    arms = group_runs([load_run(r) for r in runs])
    labels = [arm.label for arm in arms]
    assert max(map(len, labels)) > 70  # "F-Noise σ=0.11547 (elementwise, uniform, all levels; preset ...)"
    figure = plot_comparison(arms)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    for label in labels[1:]:
        (title,) = [t for t in titles if t.split("\nseeds")[0].replace("\n", " ") == label]
        assert all(len(line) <= TITLE_WIDTH for line in title.splitlines()) and title.count("\n") >= 2
    legends = [lg for sub in [figure, *figure.subfigs] for lg in sub.legends]
    legends += [ax.get_legend() for ax in figure.axes if ax.get_legend()]
    (legend_box,) = legends
    legend = [t.get_text() for t in legend_box.get_texts()]
    assert [t.replace("\n", " ") for t in legend] == labels
    assert all(len(line) <= TITLE_WIDTH for text in legend for line in text.splitlines())
    ticks = [t.get_text() for ax in figure.axes[-2:] for t in ax.get_xticklabels()]
    assert sorted(t.replace("\n", " ") for t in ticks) == sorted(labels * 2)  # both panels
    assert all(len(line) <= TICK_WIDTH for tick in ticks for line in tick.splitlines())
    assert wrap_label("a σ=0.11547-long-word", 4) == "a\nσ=0.11547-long-word"
    # Laid out: the legend covers no panel, and the AP panels' labels do not widen one gap of the grid.
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    legend_extent = legend_box.get_window_extent(renderer)
    assert not any(ax.get_window_extent(renderer).overlaps(legend_extent) for ax in figure.axes)
    top_row = sorted((ax.get_position() for ax in figure.axes[:-2] if ax.get_title()), key=lambda box: box.x0)
    assert len(top_row) == len(arms) + 1
    gaps = [right.x0 - left.x1 for left, right in zip(top_row, top_row[1:])]
    assert max(gaps) < 1.5 * min(gaps), gaps


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


def test_run_finished_reads_the_nested_config_of_train():
    """train writes config.json nested (``optim.epochs``); earlier versions wrote it flat (``epochs``)."""
    assert planned_epochs({"optim": {"epochs": 3}, "model": {}}) == 3
    assert planned_epochs({"epochs": 9, "model": "resnet50"}) == 9
    assert planned_epochs({"model": "resnet50"}) is None


def test_run_finished_with_a_nested_config(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"optim": {"epochs": 3}, "model": {"model": "resnet50"}})
    )
    records = [{"type": "epoch", "epoch": e} for e in range(2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert not _run_finished(tmp_path)  # 2 of 3 epochs: resumed, not kept
    records.append({"type": "epoch", "epoch": 2})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert _run_finished(tmp_path)


# ------------------------------------------------------------------- peak, final, overfitting, compute
#: Per epoch 0..3 of seed s: (training loss, validation loss, segm AP); bbox AP = segm AP + 0.05.
#: Baseline: segm AP peaks at epoch 2, validation loss is lowest at epoch 2 and rises 0.1 + 0.01 s.
#: F-Noise σ=0.1: segm AP peaks at the last epoch, validation loss still falls there.
BASE_COURSE = [
    lambda s: (2.0, 2.1 + 0.1 * s, 0.10 + 0.01 * s),
    lambda s: (1.5, 1.6 + 0.1 * s, 0.30 + 0.01 * s),
    lambda s: (1.0, 1.4 + 0.1 * s, 0.35 + 0.01 * s),
    lambda s: (0.6, 1.5 + 0.11 * s, 0.32 + 0.01 * s),
]
NOISE_COURSE = [
    lambda s: (2.2, 2.0 + 0.1 * s, 0.10 + 0.01 * s),
    lambda s: (1.8, 1.5 + 0.1 * s, 0.28 + 0.01 * s),
    lambda s: (1.4, 1.3 + 0.1 * s, 0.34 + 0.01 * s),
    lambda s: (1.2, 1.25 + 0.12 * s, 0.36 + 0.02 * s),
]
#: A run killed after 2 of its 4 epochs, with numbers that would show if it were counted.
IN_PROGRESS_COURSE = [lambda s: (2.0, 2.0, 0.5), lambda s: (1.5, 1.0, 0.9)]
LABEL_01 = "F-Noise σ=0.1 (elementwise, all levels)"
LABEL_02 = "F-Noise σ=0.2 (elementwise, all levels)"


def _write_course(path: Path, seed: int, std: float | None, course, train_time: float) -> Path:
    """A run planned for 4 epochs that logged ``course`` (one epoch each), 180 s of evaluation each."""
    path.mkdir(parents=True)
    config = {"seed": seed, "f_noise": std is not None, "f_noise_std": std or 0.1, "epochs": 4}
    (path / "config.json").write_text(json.dumps({**config, "f_noise_mode": "elementwise"}))
    records = []
    for epoch, values in enumerate(course):
        train, val, segm = values(seed)
        records.append(
            {
                "type": "epoch",
                "epoch": epoch,
                "iteration": epoch + 1,
                "train": {"loss": train},
                "val": {"loss": val},
                "bbox": {"AP": segm + 0.05},
                "segm": {"AP": segm},
                "train_time": train_time,
                "eval_time": 180.0,
            }
        )
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def course_study(tmp_path) -> list[Path]:
    """Baseline and σ=0.1: seeds 0-2 complete, seed 3 in progress; σ=0.2: seed 0 complete, seed 1 in
    progress. Training takes 360 s an epoch (720 s under σ=0.1), evaluation 180 s."""
    runs = []
    for seed in range(3):
        runs.append(_write_course(tmp_path / "baseline" / f"seed{seed}", seed, None, BASE_COURSE, 360.0))
        runs.append(_write_course(tmp_path / "s01" / f"seed{seed}", seed, 0.1, NOISE_COURSE, 720.0))
    runs.append(_write_course(tmp_path / "baseline" / "seed3", 3, None, IN_PROGRESS_COURSE, 360.0))
    runs.append(_write_course(tmp_path / "s01" / "seed3", 3, 0.1, IN_PROGRESS_COURSE, 720.0))
    runs.append(_write_course(tmp_path / "s02" / "seed0", 0, 0.2, NOISE_COURSE, 360.0))
    runs.append(_write_course(tmp_path / "s02" / "seed1", 1, 0.2, IN_PROGRESS_COURSE, 360.0))
    return runs


def _outcomes(run_dirs: list[Path]) -> tuple[dict, dict]:
    summary = summarize(group_runs([load_run(d) for d in run_dirs]))
    return summary, {arm["label"]: arm for arm in summary["outcomes"]["arms"]}


def test_peak_final_and_minimum_validation_loss_match_hand_computation(course_study):
    _, arms = _outcomes(course_study)
    base, noise = arms["baseline"]["metrics"], arms[LABEL_01]["metrics"]
    expected = {  # name: (baseline mean, std, F-Noise σ=0.1 mean, std), by hand from the courses
        "segm_AP_peak": (0.36, 0.01, 0.38, 0.02),  # baseline at epoch 2, F-Noise at epoch 3
        "segm_AP_peak_epoch": (2.0, 0.0, 3.0, 0.0),
        "segm_AP_final": (0.33, 0.01, 0.38, 0.02),
        "bbox_AP_peak": (0.41, 0.01, 0.43, 0.02),
        "bbox_AP_final": (0.38, 0.01, 0.43, 0.02),
        "val_loss_min": (1.5, 0.1, 1.37, 0.12),  # 1.4/1.5/1.6 and 1.25/1.37/1.49
        "val_loss_min_epoch": (2.0, 0.0, 3.0, 0.0),
        "val_loss_final": (1.61, 0.11, 1.37, 0.12),
        "val_loss_rise": (0.11, 0.01, 0.0, 0.0),  # 0.10/0.11/0.12; F-Noise's still falls at the end
        "gap_final": (1.01, 0.11, 0.17, 0.12),  # 1.5 + 0.11 s - 0.6 and 1.25 + 0.12 s - 1.2
    }
    for name, (base_mean, base_std, noise_mean, noise_std) in expected.items():
        assert base[name]["seeds"] == [0, 1, 2] and noise[name]["n"] == 3, name
        assert base[name]["mean"] == pytest.approx(base_mean), name
        assert base[name]["std"] == pytest.approx(base_std, abs=1e-12), name
        assert noise[name]["mean"] == pytest.approx(noise_mean), name
        assert noise[name]["std"] == pytest.approx(noise_std, abs=1e-12), name
    assert base["segm_AP_peak"]["values"] == pytest.approx([0.35, 0.36, 0.37])


def test_paired_differences_of_peak_final_and_overfitting_measures(course_study):
    summary, _ = _outcomes(course_study)
    diffs = {d["metric"]: d for d in summary["outcomes"]["differences"] if d["arm"] == LABEL_01}
    assert set(diffs) == {
        "segm_AP_peak",
        "segm_AP_final",
        "bbox_AP_peak",
        "bbox_AP_final",
        "val_loss_min",
        "val_loss_min_epoch",
        "val_loss_rise",
        "gap_final",
    }
    half = 4.303 / math.sqrt(3)  # Student's t, 2 degrees of freedom, times 1 / sqrt(n)
    by_hand = {  # per-seed differences F-Noise - baseline, seeds 0, 1, 2
        "segm_AP_peak": (0.02, 0.01),  # 0.01, 0.02, 0.03
        "segm_AP_final": (0.05, 0.01),  # 0.04, 0.05, 0.06
        "bbox_AP_peak": (0.02, 0.01),
        "bbox_AP_final": (0.05, 0.01),
        "val_loss_min": (-0.13, 0.02),  # -0.15, -0.13, -0.11
        "val_loss_rise": (-0.11, 0.01),  # -0.10, -0.11, -0.12
        "gap_final": (-0.84, 0.01),  # -0.85, -0.84, -0.83
    }
    for name, (mean, std) in by_hand.items():
        diff = diffs[name]
        assert diff["paired"] and diff["n"] == 3, name
        assert diff["mean"] == pytest.approx(mean), name
        assert diff["std"] == pytest.approx(std), name
        assert diff["ci95"] == pytest.approx([mean - half * std, mean + half * std], abs=1e-9), name
        t = abs(mean) / (std / math.sqrt(3))
        assert diff["p"] == pytest.approx(1 - t / math.sqrt(t**2 + 2), rel=1e-6), name
    assert diffs["segm_AP_peak"]["p"] == pytest.approx(0.0741799, abs=1e-6)
    assert diffs["segm_AP_peak"]["verdict"] == "within seed noise"
    assert diffs["segm_AP_final"]["verdict"] == "beyond seed noise"
    # the minimum comes one epoch later in every seed: +1 with no spread, so no t interval and the
    # sign test's p = 2 * 0.5^3 (not the p = 0 an infinite t would give)
    epoch = diffs["val_loss_min_epoch"]
    assert epoch["mean"] == 1.0 and epoch["std"] == 0.0 and epoch["ci95"] is None
    assert epoch["p"] == pytest.approx(0.25) and epoch["verdict"] == "within seed noise"
    # σ=0.2 has one complete seed: the difference without spread, interval or p, hence no Holm family
    one = [d for d in summary["outcomes"]["differences"] if d["arm"] == LABEL_02]
    assert {d["n"] for d in one} == {1} and all(d["ci95"] is None and d["p"] is None for d in one)
    segm_final = next(d for d in one if d["metric"] == "segm_AP_final")
    assert (
        segm_final["mean"] == pytest.approx(0.04) and segm_final["verdict"] == "seed noise unknown (one seed)"
    )
    assert summary["outcomes"]["correction"] is None


def test_gap_by_epoch_is_validation_minus_training_loss_over_seeds(course_study):
    _, arms = _outcomes(course_study)
    base = {row["epoch"]: row for row in arms["baseline"]["gap_by_epoch"]}
    noise = {row["epoch"]: row for row in arms[LABEL_01]["gap_by_epoch"]}
    assert sorted(base) == sorted(noise) == [0, 1, 2, 3]
    # baseline 0.1 + 0.1 s, 0.1 + 0.1 s, 0.4 + 0.1 s, 0.9 + 0.11 s; F-Noise -0.2 + 0.1 s, -0.3 + 0.1 s,
    # -0.1 + 0.1 s, 0.05 + 0.12 s
    for rows, means, stds in (
        (base, [0.2, 0.2, 0.5, 1.01], [0.1] * 3 + [0.11]),
        (noise, [-0.1, -0.2, 0.0, 0.17], [0.1] * 3 + [0.12]),
    ):
        assert [rows[e]["mean"] for e in range(4)] == pytest.approx(means, abs=1e-12)
        assert [rows[e]["std"] for e in range(4)] == pytest.approx(stds)
        assert all(rows[e]["n"] == 3 and rows[e]["seeds"] == [0, 1, 2] for e in range(4))
    # the figure's row draws every run, the one in progress too
    rows = {
        title: per_arm for _, title, per_arm in _panel_rows(group_runs([load_run(d) for d in course_study]))
    }
    epochs, gaps = rows["validation − training loss by epoch"][0][1]  # baseline, seed 1
    assert list(epochs) == [0, 1, 2, 3] and gaps == pytest.approx([0.2, 0.2, 0.5, 1.01])
    assert len(rows["validation − training loss by epoch"][0]) == 4


def test_segm_ap_by_epoch_is_the_mean_over_complete_seeds_and_a_markdown_table(course_study):
    summary, arms = _outcomes(course_study)
    base = arms["baseline"]["segm_AP_by_epoch"]
    # baseline 0.10/0.30/0.35/0.32 + 0.01 s over seeds 0-2; the seed in progress (0.5, 0.9) is left out
    assert [row["epoch"] for row in base] == [0, 1, 2, 3]
    assert [row["mean"] for row in base] == pytest.approx([0.11, 0.31, 0.36, 0.33])
    assert [row["std"] for row in base] == pytest.approx([0.01] * 4)
    assert all(row["seeds"] == [0, 1, 2] for row in base)
    # F-Noise σ=0.1 at its last epoch: 0.36 + 0.02 s; σ=0.2 has one complete seed: no std
    assert arms[LABEL_01]["segm_AP_by_epoch"][3]["mean"] == pytest.approx(0.38)
    assert arms[LABEL_01]["segm_AP_by_epoch"][3]["std"] == pytest.approx(0.02)
    assert arms[LABEL_02]["segm_AP_by_epoch"][3]["std"] is None
    lines = summary_markdown(summary).splitlines()
    start = lines.index("### Validation segm AP by epoch")
    header = f"| epoch | baseline | {LABEL_01} | {LABEL_02} |"
    assert lines[start + 4] == header
    assert lines[start + 6] == "| 0 | 0.1100 ± 0.0100 | 0.1100 ± 0.0100 | 0.1000 |"
    assert lines[start + 9] == "| 3 | 0.3300 ± 0.0100 | 0.3800 ± 0.0200 | 0.3600 |"
    assert lines.index("### Validation − training loss by epoch") > start


def test_runs_in_progress_are_listed_and_left_out_of_the_statistics(course_study):
    summary, arms = _outcomes(course_study)
    assert [
        (run["arm"], run["seed"], run["epochs_done"], run["epochs"]) for run in summary["in_progress"]
    ] == [
        ("baseline", 3, 2, 4),
        (LABEL_01, 3, 2, 4),
        (LABEL_02, 1, 2, 4),
    ]
    assert [(label, arm["n"], arm["seeds"]) for label, arm in arms.items()] == [
        ("baseline", 3, [0, 1, 2]),
        (LABEL_01, 3, [0, 1, 2]),
        (LABEL_02, 1, [0]),
    ]
    single = arms[LABEL_02]["metrics"]["segm_AP_final"]
    assert single["mean"] == pytest.approx(0.36) and single["std"] is None
    # the snapshot at the last common epoch (epoch 1) still holds every run
    assert summary["epoch"] == 1 and summary["arms"][0]["seeds"] == [0, 1, 2, 3]


def test_ap_panels_name_the_epoch_they_show_while_runs_are_in_progress(course_study):
    grouped = group_runs([load_run(d) for d in course_study])
    points = _final_ap_points(grouped)
    # seed 3 of two arms and seed 1 of σ=0.2 stopped after epoch 1: the panels show epoch 1, every seed
    assert points.quantity == "segm AP at epoch 1" and "in progress" in points.note
    assert points.seeds == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1]]
    assert points.values[0] == pytest.approx([0.30, 0.31, 0.32, 0.9])
    figure = plot_comparison(grouped)
    titles = [ax.get_title() for ax in figure.subfigs[1].axes]
    assert titles[0].startswith("segm AP at epoch 1 per arm") and all("in progress" in t for t in titles)
    assert [ax.get_ylabel() for ax in figure.subfigs[1].axes] == [
        "segm AP at epoch 1 (val)",
        "Δ segm AP at epoch 1 (points)",
    ]
    finished = group_runs([load_run(d) for d in course_study if d.name != "seed3" and d.parent.name != "s02"])
    assert _final_ap_points(finished).quantity == "final segm AP"


def test_compute_sums_train_and_eval_time_of_every_run(course_study):
    summary, _ = _outcomes(course_study)
    compute = summary["compute"]
    # baseline 3 x 4 + 2 epochs of 360 s training, 180 s evaluation; σ=0.1 the same with 720 s; σ=0.2 4 + 2
    rows = [
        (a["label"], a["runs"], a["epochs"], a["train_hours"], a["eval_hours"], a["hours"])
        for a in compute["arms"]
    ]
    assert rows == [
        ("baseline", 4, 14, pytest.approx(1.4), pytest.approx(0.7), pytest.approx(2.1)),
        (LABEL_01, 4, 14, pytest.approx(2.8), pytest.approx(0.7), pytest.approx(3.5)),
        (LABEL_02, 2, 6, pytest.approx(0.6), pytest.approx(0.3), pytest.approx(0.9)),
    ]
    assert (compute["train_hours"], compute["eval_hours"], compute["hours"]) == pytest.approx((4.8, 1.7, 6.5))


def test_markdown_reports_peak_gap_progress_and_compute(course_study, tmp_path):
    out = tmp_path / "report" / "comparison.png"
    assert main([*map(str, course_study), "--out", str(out)]) == 0
    markdown = out.with_suffix(".md").read_text()
    in_progress = [line for line in markdown.splitlines() if line.startswith("**In progress**")]
    assert len(in_progress) == 1 and in_progress[0].endswith(
        f"baseline seed 3 (2 of 4 epochs), {LABEL_01} seed 3 (2 of 4 epochs), "
        f"{LABEL_02} seed 1 (2 of 4 epochs)."
    )
    peak_row = (
        "| baseline | 3 (0, 1, 2) | 0.3600 ± 0.0100 | 2.00 ± 0.00 | 0.3300 ± 0.0100 | 0.4100 ± 0.0100 | "
        "2.00 ± 0.00 | 0.3800 ± 0.0100 |"
    )
    assert peak_row in markdown
    loss_row = (
        f"| {LABEL_01} | 3 (0, 1, 2) | 1.3700 ± 0.1200 | 3.00 ± 0.00 | 1.3700 ± 0.1200 | 0.0000 ± 0.0000 | "
        "0.1700 ± 0.1200 |"
    )
    assert loss_row in markdown
    assert f"| {LABEL_02} | 1 (0; one seed: means without std or CI) | 0.3600 |" in markdown
    assert (
        f"| {LABEL_01} | validation − training loss, final epoch | -0.8400 ± 0.0100 | [-0.8648, -0.8152] |"
        in markdown
    )
    assert f"| {LABEL_01} | epoch of minimum validation loss | +1.00 ± 0.00 | n/a | 0.25 |" in markdown
    assert "| 3 | 1.0100 ± 0.1100 | 0.1700 ± 0.1200 | 0.0500 |" in markdown  # gap at epoch 3, per arm
    bias = (
        "measured on perturbed features, so it is higher than the same model's loss on clean features, and "
        "that shrinks its measured gap"
    )
    assert bias in markdown
    assert "| **study total** | 10 | 34 | 4.80 | 1.70 | 6.50 |" in markdown
    assert json.loads(out.with_suffix(".json").read_text())["compute"]["hours"] == pytest.approx(6.5)


def test_no_complete_run_gives_no_statistics_but_the_compute(tmp_path):
    run = _write_course(tmp_path / "a", 0, None, IN_PROGRESS_COURSE, 3600.0)
    out = tmp_path / "c.png"
    assert main([str(run), "--out", str(out)]) == 0
    markdown = out.with_suffix(".md").read_text()
    assert "No run is complete yet" in markdown and "baseline seed 0 (2 of 4 epochs)" in markdown
    assert "| **study total** | 1 | 2 | 2.00 | 0.10 | 2.10 |" in markdown


def test_common_seed_difference_pairs_the_seeds_both_arms_completed():
    arm = describe([0.5, 0.6, 0.9], [0, 1, 2])
    reference = describe([0.4, 0.4, 0.1], [0, 1, 7])  # seed 2 not complete here, seed 7 not there
    diff = common_seed_difference(arm, reference)
    assert (
        diff.paired
        and diff.n == 2
        and diff.mean == pytest.approx(0.15)
        and diff.std == pytest.approx(0.05 * math.sqrt(2))
    )
    unpaired = common_seed_difference(describe([0.5, 0.7], [0, 1]), describe([0.4, 0.4], [2, 3]))
    assert not unpaired.paired and unpaired.mean == pytest.approx(0.2)


def test_seed_differences_pair_by_seed_not_by_position():
    # seeds in another order, one only on each side, and "3" written as text on one side
    assert seed_differences([0.5, 0.4, 0.9], [2, 3, 7], [0.1, 0.2, 0.3], [1, "3", 2]) == pytest.approx(
        [0.2, 0.2]
    )
    assert seed_differences([0.5], [4], [0.1], [5]) == []


def test_a_difference_every_seed_shares_exactly_uses_the_sign_test_not_an_infinite_t():
    # the epoch of the minimum validation loss: one epoch later in both seeds
    two = difference(describe([8.0, 8.0], [0, 1]), describe([7.0, 7.0], [0, 1]))
    assert two.paired and two.mean == 1.0 and two.std == 0.0
    assert two.ci95 is None and two.p == pytest.approx(0.5) and two.verdict == "within seed noise"
    five = difference(describe([3.0] * 5, range(5)), describe([2.0] * 5, range(5)))
    assert five.p == pytest.approx(0.0625) and five.verdict == "within seed noise"
    six = difference(describe([2.0] * 6, range(6)), describe([3.0] * 6, range(6)))
    assert six.p == pytest.approx(0.03125) and six.verdict == "beyond seed noise"
    same = difference(describe([5.0, 5.0], [0, 1]), describe([5.0, 5.0], [0, 1]))
    assert same.ci95 == (0.0, 0.0) and same.p == 1.0 and same.verdict == "within seed noise"


class _SlowStdout:
    """A stdout whose every write yields to other threads, so that two unguarded ``print`` calls (text,
    then newline: two writes) from two jobs interleave."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        time.sleep(0.002)
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def test_parallel_jobs_print_whole_progress_lines(fake_python, tmp_path, monkeypatch):
    arms = study_arms([("f_noise_std", ["0.05", "0.1", "0.2"])])
    study = tmp_path / "study"
    train_arms([0, 1], study, [], defaults=(), arms=arms, python=fake_python)  # all 8 runs finished
    out = _SlowStdout()
    monkeypatch.setattr(sys, "stdout", out)
    train_arms([0, 1], study, [], defaults=(), arms=arms, python=fake_python, jobs=2)
    lines = out.text.splitlines()
    assert len(lines) == 8
    assert all(re.fullmatch(r"\[\d/8\] \S+ seed [01]: finished before, kept", line) for line in lines), lines
