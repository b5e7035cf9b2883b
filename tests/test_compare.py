"""The with/without F-Noise comparison on fabricated runs with known numbers."""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from conftest import write_fake_python
from fnoise_maskrcnn.compare import main
from fnoise_maskrcnn.study import (
    STUDY_TRAIN_FLAGS,
    RunError,
    SeedPlan,
    group_runs,
    load_arms,
    load_run,
    plan_seeds,
    summarize,
    summary_markdown,
    train_arms,
)

COMPONENTS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")

# final (last common epoch) values per seed 0, 1, 2
BASE_TRAIN = [1.0, 1.2, 1.4]
NOISE_TRAIN = [1.1, 1.25, 1.6]  # paired differences 0.1, 0.05, 0.2: within seed noise
BASE_VAL = [1.0, 1.01, 1.02]
NOISE_VAL = [0.5, 0.52, 0.51]  # paired differences -0.5, -0.49, -0.51: beyond seed noise
BASE_SEGM = [0.30, 0.32, 0.34]
NOISE_SEGM = [0.31, 0.30, 0.36]


def write_run(
    path: Path,
    seed: int,
    f_noise: bool,
    final_train: float,
    final_val: float | None,
    final_segm: float | None,
    *,
    epochs: int = 2,
    iters_per_epoch: int = 10,
    std: float = 0.1,
    levels: Sequence[str] | None = None,
    clean_train: float | None = None,
    **config,
) -> Path:
    """A run directory as train writes it; the last epoch's losses and segm AP are the given values
    (``clean_train``: the loss on training images with F-Noise off, logged at every epoch when given)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(
        json.dumps(
            {
                "seed": seed,
                "output_dir": str(path),
                "f_noise": f_noise,
                "f_noise_std": std,
                "f_noise_mode": "elementwise",
                "f_noise_levels": levels,
                "model": "mobilenet_v3",
                "epochs": epochs,
                "model_config": {"f_noise": {"enabled": f_noise, "std": std}},
                **config,
            }
        )
    )
    lines = []
    for epoch in range(epochs):
        lines += _iteration_records(seed, epoch, iters_per_epoch)
        last = epoch == epochs - 1
        extra = 0.5 * (epochs - 1 - epoch)  # earlier epochs have higher losses, lower AP
        lines.append(
            {
                "type": "epoch",
                "epoch": epoch,
                "iteration": (epoch + 1) * iters_per_epoch,
                "train": {"loss": final_train + extra, **{k: final_train / 5 for k in COMPONENTS}},
                "val": None if final_val is None else {"loss": final_val + extra},
                "bbox": None if final_segm is None else {"AP": final_segm + 0.05 - 0.1 * (not last)},
                "segm": None if final_segm is None else {"AP": final_segm - 0.1 * (not last)},
                "f_noise_nsr": {"0": std} if f_noise else None,
                **({} if clean_train is None else {"train_clean": {"loss": clean_train + extra}}),
            }
        )
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _iteration_records(seed: int, epoch: int, iters_per_epoch: int) -> list[dict]:
    records = []
    for i in range(iters_per_epoch):
        iteration = epoch * iters_per_epoch + i
        parts = {k: 0.2 + 0.01 * seed + 1.0 / (iteration + 1) for k in COMPONENTS}
        records.append(
            {
                "type": "iter",
                "epoch": epoch,
                "iteration": iteration,
                "lr": 0.01,
                "loss": sum(parts.values()),
                **parts,
                "time": 0.1,
                "data_time": 0.01,
            }
        )
    return records


@pytest.fixture
def study(tmp_path) -> Path:
    for seed in range(3):
        base = (BASE_TRAIN[seed], BASE_VAL[seed], BASE_SEGM[seed])
        noise = (NOISE_TRAIN[seed], NOISE_VAL[seed], NOISE_SEGM[seed])
        write_run(tmp_path / "baseline" / f"seed{seed}", seed, False, *base)
        write_run(tmp_path / "fnoise" / f"seed{seed}", seed, True, *noise)
    return tmp_path


def _runs(root: Path):
    return [load_run(path) for path in sorted(root.glob("*/seed*"))]


def test_groups_runs_into_arms_by_configuration(study, tmp_path):
    write_run(tmp_path / "fnoise03" / "seed0", 0, True, 1.0, 1.0, 0.3, std=0.3, levels=["3"])
    write_run(tmp_path / "fnoise03" / "seed1", 1, True, 1.0, 1.0, 0.3, std=0.3, levels=["3"])
    # F-Noise settings of a baseline run do not matter: still the same baseline arm
    write_run(tmp_path / "baseline" / "seed7", 7, False, 1.0, 1.0, 0.3, std=0.5)

    arms = group_runs(_runs(tmp_path))

    assert [arm.label for arm in arms] == [
        "baseline",
        "F-Noise σ=0.1 (elementwise, all levels)",
        "F-Noise σ=0.3 (elementwise, level 3)",
    ]
    assert [arm.seeds for arm in arms] == [[0, 1, 2, 7], [0, 1, 2], [0, 1]]
    assert arms[0].is_baseline and not arms[1].is_baseline


def test_a_preset_arm_is_labelled_with_its_preset(study, tmp_path):
    # --f-noise-preset gaussian-dropout resolves to the same σ = 0.1 as --f-noise, but the runs were asked
    # for differently and form their own arm: the labels must tell the two apart
    for seed in (0, 1):
        write_run(
            tmp_path / "gd" / f"seed{seed}", seed, True, 1.0, 1.0, 0.3, f_noise_preset="gaussian-dropout"
        )
    uniform = {"std": 0.2 / 3**0.5, "f_noise_dist": "uniform", "f_noise_preset": "deepmirror-uniform"}
    write_run(tmp_path / "du" / "seed0", 0, True, 1.0, 1.0, 0.3, **uniform)
    labels = [arm.label for arm in group_runs(_runs(tmp_path))]
    assert labels == [
        "baseline",
        "F-Noise σ=0.1 (elementwise, all levels)",
        "F-Noise σ=0.1 (elementwise, all levels; preset gaussian-dropout)",
        "F-Noise σ=0.11547 (elementwise, uniform, all levels; preset deepmirror-uniform)",
    ]


def test_load_arms_reads_a_directory_once_and_keeps_the_path_as_given(study, monkeypatch):
    monkeypatch.chdir(study)
    given = ["baseline/seed0", "fnoise/seed0", str(study / "baseline" / "seed0"), "./fnoise/seed0"]
    arms = load_arms(given)
    assert [[str(run.path) for run in arm.runs] for arm in arms] == [["baseline/seed0"], ["fnoise/seed0"]]
    assert summarize(arms)["arms"][0]["runs"] == ["baseline/seed0"]


def test_other_differences_split_arms_and_show_in_labels(tmp_path):
    write_run(tmp_path / "a", 0, False, 1.0, 1.0, 0.3, lr=0.01)
    write_run(tmp_path / "b", 1, False, 1.0, 1.0, 0.3, lr=0.02)
    write_run(tmp_path / "c", 1, True, 1.0, 1.0, 0.3, lr=0.02)
    arms = group_runs(_runs_of(tmp_path, "abc"))
    assert [arm.label for arm in arms] == [
        "baseline, lr=0.01",
        "baseline, lr=0.02",
        "F-Noise σ=0.1 (elementwise, all levels), lr=0.02",
    ]
    # the F-Noise arm is compared with the baseline that has the same lr
    assert {d["reference"] for d in summarize(arms)["differences"]} == {"baseline, lr=0.02"}
    # an ignored key does not split arms
    assert len(group_runs(_runs_of(tmp_path, "ab"), ignored_keys=("seed", "output_dir", "lr"))) == 1


def test_the_clean_training_loss_pass_does_not_split_arms(study):
    # a study resumed by a newer compare adds --train-loss-images to its later seeds; the pass measures
    # and changes nothing that is learnt, so those seeds join the arms of the earlier ones
    write_run(study / "baseline" / "seed3", 3, False, 1.0, 1.0, 0.3, train_loss_images=64, clean_train=0.9)
    write_run(study / "fnoise" / "seed3", 3, True, 1.0, 1.0, 0.3, train_loss_images=64, clean_train=0.9)
    arms = group_runs(_runs(study))
    assert [arm.label for arm in arms] == ["baseline", "F-Noise σ=0.1 (elementwise, all levels)"]
    assert [arm.seeds for arm in arms] == [[0, 1, 2, 3], [0, 1, 2, 3]]


def test_the_checkpoint_interval_does_not_split_arms(study):
    # a study restarted with --checkpoint-every saves last.pth more often from then on; resuming keeps the
    # data order and random streams, so those seeds join the arms of the earlier ones
    write_run(study / "baseline" / "seed3", 3, False, 1.0, 1.0, 0.3, checkpoint_every=50)
    write_run(study / "fnoise" / "seed3", 3, True, 1.0, 1.0, 0.3, checkpoint_every=50)
    arms = group_runs(_runs(study))
    assert [arm.label for arm in arms] == ["baseline", "F-Noise σ=0.1 (elementwise, all levels)"]
    assert [arm.seeds for arm in arms] == [[0, 1, 2, 3], [0, 1, 2, 3]]


def _with_precision(path: Path, *precisions: str) -> Path:
    """Appends a ``"run"`` record per precision (one per start of train) to a run's metrics.jsonl."""
    with open(path / "metrics.jsonl", "a") as f:
        for precision in precisions:
            f.write(json.dumps({"type": "run", "device": "cpu", "precision": precision}) + "\n")
    return path


def test_a_seed_is_a_block_of_one_precision_and_seeds_of_two_precisions_pool(tmp_path):
    """Seeds 0-1 trained under bfloat16 autocast (seed 0 before the "run" record said so), seed 2 in
    float32 (--amp on a CPU without bfloat16, or --no-amp): one arm per configuration, each paired
    difference within one precision, and the report says which seed is which."""
    for arm, f_noise, segm in (("b", False, BASE_SEGM), ("n", True, NOISE_SEGM)):
        for seed, precision in ((0, None), (1, "bfloat16"), (2, "float32")):
            amp = {"amp": precision != "float32"}  # --no-amp where float32 was asked for
            path = write_run(tmp_path / f"{arm}{seed}", seed, f_noise, 1.0, 1.0, segm[seed], **amp)
            if precision is not None:
                _with_precision(path, precision)
    arms = group_runs(_runs_of(tmp_path, ["b0", "b1", "b2", "n0", "n1", "n2"]))
    assert [(arm.label, arm.seeds) for arm in arms] == [
        ("baseline", [0, 1, 2]),
        ("F-Noise σ=0.1 (elementwise, all levels)", [0, 1, 2]),
    ]
    summary = summarize(arms)
    assert summary["precision_by_seed"] == {"0": "bfloat16", "1": "bfloat16", "2": "float32"}
    segm = next(d for d in summary["differences"] if d["metric"] == "segm_AP")
    assert segm["mean"] == pytest.approx(statistics.mean(n - b for n, b in zip(NOISE_SEGM, BASE_SEGM)))
    assert "Precision: seeds 0, 1 in bfloat16; seed 2 in float32." in summary_markdown(summary)

    # a seed whose arms trained in different precisions cannot be paired
    _with_precision(write_run(tmp_path / "n3", 3, True, 1.0, 1.0, 0.3), "bfloat16")
    _with_precision(write_run(tmp_path / "b3", 3, False, 1.0, 1.0, 0.3), "float32")
    with pytest.raises(
        RunError, match=r"b3: trained in float32, but .*n3 of the same seed \(3\) in bfloat16"
    ):
        group_runs(_runs_of(tmp_path, ["n3", "b3"]))


def test_the_report_counts_the_runs_of_each_processor_model(tmp_path):
    """Runs record the processor they trained on; a study over several models says how many runs each
    trained (a run resumed on another model under both), and one over a single model says nothing."""
    paths = [
        write_run(tmp_path / name, seed, f_noise, 1.0, 1.0, 0.3)
        for name, seed, f_noise in (("b0", 0, False), ("n0", 0, True), ("b1", 1, False), ("n1", 1, True))
    ]
    for path, processors in zip(paths, (["CPU A"], ["CPU A"], ["CPU A", "CPU B"], [])):
        with open(path / "metrics.jsonl", "a") as f:
            for name in processors:
                f.write(json.dumps({"type": "run", "precision": "float32", "processor": name}) + "\n")
    runs = _runs_of(tmp_path, ["b0", "n0", "b1", "n1"])
    assert [run.processors for run in runs] == [("CPU A",), ("CPU A",), ("CPU A", "CPU B"), ()]
    summary = summarize(group_runs(runs))
    assert summary["processors"] == {"CPU A": 2, "CPU A then CPU B": 1, "not recorded": 1}
    assert "Processors: CPU A: 2 runs; CPU A then CPU B: 1 run; not recorded: 1 run." in summary_markdown(
        summary
    )
    one_model = summarize(group_runs(runs[:2]))
    assert one_model["processors"] == {"CPU A": 2} and "Processors:" not in summary_markdown(one_model)


def test_a_run_resumed_in_another_precision_is_refused(tmp_path):
    path = _with_precision(write_run(tmp_path / "run", 0, False, 1.0, 1.0, 0.3), "float32", "bfloat16")
    with pytest.raises(
        RunError, match=r"metrics.jsonl: the run was resumed in another precision \(float32 then"
    ):
        load_run(path)


def _runs_of(root: Path, names: Sequence[str]):
    return [load_run(root / name) for name in names]


def test_summary_reports_mean_std_n_and_paired_differences(study):
    summary = summarize(group_runs(_runs(study)))

    assert summary["epoch"] == 1
    baseline, noise = summary["arms"]
    assert baseline["label"] == "baseline" and baseline["seeds"] == [0, 1, 2]
    expected = ((baseline, BASE_TRAIN, BASE_VAL, BASE_SEGM), (noise, NOISE_TRAIN, NOISE_VAL, NOISE_SEGM))
    for arm, train, val, segm in expected:
        metrics = arm["metrics"]
        assert metrics["train_loss"]["n"] == 3
        assert metrics["train_loss"]["mean"] == pytest.approx(statistics.mean(train))
        assert metrics["train_loss"]["std"] == pytest.approx(statistics.stdev(train))
        assert metrics["val_loss"]["mean"] == pytest.approx(statistics.mean(val))
        assert metrics["val_loss"]["std"] == pytest.approx(statistics.stdev(val))
        assert metrics["segm_AP"]["mean"] == pytest.approx(statistics.mean(segm))
        assert metrics["bbox_AP"]["mean"] == pytest.approx(statistics.mean(segm) + 0.05)
        assert metrics["segm_AP"]["values"] == pytest.approx(segm)

    diffs = {d["metric"]: d for d in summary["differences"]}
    train_diffs = [n - b for n, b in zip(NOISE_TRAIN, BASE_TRAIN)]
    half_width = 4.303 * statistics.stdev(train_diffs) / 3**0.5  # Student's t, 2 degrees of freedom
    assert diffs["train_loss"]["paired"] and diffs["train_loss"]["n"] == 3
    assert diffs["train_loss"]["mean"] == pytest.approx(statistics.mean(train_diffs))
    assert diffs["train_loss"]["std"] == pytest.approx(statistics.stdev(train_diffs))
    assert diffs["train_loss"]["ci95"] == pytest.approx(
        [statistics.mean(train_diffs) - half_width, statistics.mean(train_diffs) + half_width], rel=1e-3
    )
    assert diffs["train_loss"]["verdict"] == "within seed noise"
    assert diffs["val_loss"]["mean"] == pytest.approx(-0.5)
    assert diffs["val_loss"]["verdict"] == "beyond seed noise"
    # runs without --train-loss-images have no clean training loss: no value and no difference
    assert baseline["metrics"]["train_clean_loss"] is None and "train_clean_loss" not in diffs
    assert "clean training loss (F-Noise off) |" not in summary_markdown(summary)  # no empty column


def test_summary_reports_peak_final_and_overfitting_measures_of_complete_runs(study):
    summary = summarize(group_runs(_runs(study)))
    baseline, noise = (arm["metrics"] for arm in summary["outcomes"]["arms"])
    # two epochs; epoch 0 has losses 0.5 higher and AP 0.1 lower: the peak and the minimum are at epoch 1
    assert baseline["segm_AP_peak"]["values"] == pytest.approx(BASE_SEGM)
    assert baseline["segm_AP_peak_epoch"]["values"] == [1.0, 1.0, 1.0]
    assert noise["bbox_AP_final"]["mean"] == pytest.approx(statistics.mean(NOISE_SEGM) + 0.05)
    assert noise["val_loss_min"]["values"] == pytest.approx(NOISE_VAL)
    assert noise["val_loss_rise"]["values"] == [0.0, 0.0, 0.0]
    base_gaps = [v - t for v, t in zip(BASE_VAL, BASE_TRAIN)]  # 0, -0.19, -0.38
    noise_gaps = [v - t for v, t in zip(NOISE_VAL, NOISE_TRAIN)]  # -0.6, -0.73, -1.09
    assert baseline["gap_final"]["mean"] == pytest.approx(-0.19)
    assert baseline["gap_final"]["std"] == pytest.approx(statistics.stdev(base_gaps))
    gap_rows = summary["outcomes"]["arms"][1]["gap_by_epoch"]
    assert [row["epoch"] for row in gap_rows] == [0, 1]
    assert [row["mean"] for row in gap_rows] == pytest.approx([statistics.mean(noise_gaps)] * 2)

    diffs = {d["metric"]: d for d in summary["outcomes"]["differences"]}
    per_seed = [n - b for n, b in zip(noise_gaps, base_gaps)]  # -0.6, -0.54, -0.71
    assert diffs["gap_final"]["paired"] and diffs["gap_final"]["n"] == 3
    assert diffs["gap_final"]["mean"] == pytest.approx(-0.61666667)
    assert diffs["gap_final"]["std"] == pytest.approx(statistics.stdev(per_seed))
    segm = [n - b for n, b in zip(NOISE_SEGM, BASE_SEGM)]  # 0.01, -0.02, 0.02
    assert diffs["segm_AP_peak"]["mean"] == pytest.approx(statistics.mean(segm))
    assert diffs["segm_AP_final"]["verdict"] == "within seed noise"
    assert summary["in_progress"] == [] and summary["compute"]["hours"] == 0.0  # no times logged


def test_the_gap_uses_the_clean_training_loss_when_every_run_logged_one(tmp_path):
    clean = {False: [0.9, 1.0, 1.1], True: [0.6, 0.7, 0.9]}  # F-Noise off, on training images
    for seed in range(3):
        for arm, f_noise, train_loss, val in (
            ("baseline", False, BASE_TRAIN, BASE_VAL),
            ("fnoise", True, NOISE_TRAIN, NOISE_VAL),
        ):
            write_run(
                tmp_path / arm / f"seed{seed}",
                seed,
                f_noise,
                train_loss[seed],
                val[seed],
                0.3,
                clean_train=clean[f_noise][seed],
            )
    summary = summarize(group_runs(_runs(tmp_path)))
    outcomes = summary["outcomes"]
    assert outcomes["gap_training"] == "train_clean"
    base_gaps = [v - c for v, c in zip(BASE_VAL, clean[False])]  # 0.1, 0.01, -0.08
    noise_gaps = [v - c for v, c in zip(NOISE_VAL, clean[True])]  # -0.1, -0.18, -0.39
    baseline, noise = (arm["metrics"] for arm in outcomes["arms"])
    assert baseline["gap_final"]["values"] == pytest.approx(base_gaps)
    assert noise["gap_final"]["values"] == pytest.approx(noise_gaps)
    assert [row["mean"] for row in outcomes["arms"][0]["gap_by_epoch"]] == pytest.approx(
        [statistics.mean(base_gaps)] * 2  # both epochs' losses are 0.5 higher at epoch 0
    )
    diff = next(d for d in outcomes["differences"] if d["metric"] == "gap_final")
    assert diff["mean"] == pytest.approx(-0.7 / 3)  # -0.2, -0.19, -0.31
    text = summary_markdown(summary)
    assert "The gap compares like with like" in text and "biased for F-Noise arms" not in text

    # The snapshot splits the gap into its sides: the clean training loss beside the validation loss.
    base_clean, noise_clean = (arm["metrics"]["train_clean_loss"] for arm in summary["arms"])
    assert base_clean["values"] == pytest.approx(clean[False]) and noise_clean["n"] == 3
    clean_diff = next(d for d in summary["differences"] if d["metric"] == "train_clean_loss")
    assert clean_diff["paired"] and clean_diff["mean"] == pytest.approx(-0.8 / 3)  # -0.3, -0.3, -0.2
    assert "| clean training loss (F-Noise off) |" in text
    assert "| 1.0000 ± 0.1000 |" in text  # the baseline's clean loss: 0.9, 1.0, 1.1

    # One run without the clean loss: every arm falls back to the epoch mean, and says so.
    metrics = tmp_path / "fnoise" / "seed2" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    metrics.write_text("".join(json.dumps({**r, "train_clean": None}) + "\n" for r in records))
    summary = summarize(group_runs(_runs(tmp_path)))
    assert summary["outcomes"]["gap_training"] == "train"
    baseline = summary["outcomes"]["arms"][0]["metrics"]
    assert baseline["gap_final"]["values"] == pytest.approx([v - t for v, t in zip(BASE_VAL, BASE_TRAIN)])
    text = summary_markdown(summary)
    assert "The gap is biased for F-Noise arms" in text
    assert summary["arms"][1]["metrics"]["train_clean_loss"]["seeds"] == [0, 1]
    assert "0.6500 ± 0.0707 (2 seeds)" in text  # the F-Noise arm's clean loss of seeds 0, 1: 0.6, 0.7


def test_a_seed_one_arm_lacks_is_left_out_of_the_paired_difference(study):
    # Seed 3 of the baseline has finished, the F-Noise arm's seed 3 not yet: the difference stays paired
    # over seeds 0-2 (not Welch's unpaired interval over 4 against 3 seeds, which mixes unlike seeds).
    write_run(study / "baseline" / "seed3", 3, False, 5.0, 5.0, 0.9)
    summary = summarize(group_runs(_runs(study)))
    assert summary["arms"][0]["seeds"] == [0, 1, 2, 3]
    diffs = {d["metric"]: d for d in summary["differences"]}
    train_diffs = [n - b for n, b in zip(NOISE_TRAIN, BASE_TRAIN)]
    assert diffs["train_loss"]["paired"] and diffs["train_loss"]["n"] == 3
    assert diffs["train_loss"]["mean"] == pytest.approx(statistics.mean(train_diffs))
    assert diffs["train_loss"]["std"] == pytest.approx(statistics.stdev(train_diffs))


def test_runs_of_different_lengths_are_compared_at_the_common_epoch(tmp_path):
    write_run(tmp_path / "a", 0, False, 1.0, 1.0, 0.3, epochs=2)
    write_run(tmp_path / "b", 0, True, 2.0, 1.5, 0.2, epochs=3)
    # run a is still running its third epoch
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps({**config, "epochs": 3}))
    summary = summarize(group_runs(_runs_of(tmp_path, "ab")))
    assert summary["epoch"] == 1
    # run b's epoch 1 is one epoch before its last: final value + 0.5
    assert summary["arms"][1]["metrics"]["train_loss"]["mean"] == pytest.approx(2.5)
    assert summary["arms"][1]["metrics"]["train_loss"]["std"] is None
    assert summary["differences"][0]["verdict"] == "seed noise unknown (one seed)"


def test_cli_writes_figure_and_tables(study, tmp_path, capsys):
    out = tmp_path / "report" / "comparison.png"
    assert main([*map(str, sorted(study.glob("*/seed*"))), "--out", str(out), "--title", "test"]) == 0

    with Image.open(out) as png:
        assert png.format == "PNG"
        # three columns (two arms + overlay), eleven rows of panels
        assert 600 <= png.width <= 1200 and png.height >= 1200
    markdown = out.with_suffix(".md").read_text()
    row = "| baseline | 3 (0, 1, 2) | 1.2000 ± 0.2000 | 1.0100 ± 0.0100 | 0.3700 ± 0.0200 | 0.3200 ± 0.0200 |"
    assert row in markdown
    assert "| F-Noise σ=0.1 (elementwise, all levels) | validation loss | -0.5000 ± 0.0100 |" in markdown
    assert "beyond seed noise" in markdown and "within seed noise" in markdown
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["arms"][1]["metrics"]["train_loss"]["mean"] == pytest.approx(statistics.mean(NOISE_TRAIN))
    assert "| baseline | 3 (0, 1, 2) |" in capsys.readouterr().out
    assert "## Does F-Noise delay overfitting?" in markdown and "**In progress**" not in markdown


def test_runs_without_validation_or_epochs(tmp_path):
    write_run(tmp_path / "a", 0, False, 1.0, None, None)
    write_run(tmp_path / "b", 0, True, 1.1, None, None)
    out = tmp_path / "c.png"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["arms"][0]["metrics"]["val_loss"] is None
    assert {d["metric"] for d in summary["differences"]} == {"train_loss"}

    # a run still in its first epoch: curves, and the snapshot leaves it out instead of hiding the others
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "a" / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["epoch"] == load_run(tmp_path / "b").epochs[-1]["epoch"]
    assert summary["arms"][0]["metrics"]["train_loss"] is None
    assert summary["arms"][1]["metrics"]["train_loss"]["values"] == [pytest.approx(1.1)]
    assert "Runs with no finished epoch yet are left out." in out.with_suffix(".md").read_text()
    assert len(load_run(tmp_path / "a").iterations) == 5  # the half-written line is ignored

    # no run has finished an epoch: curves, no values
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "b" / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n")
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert "No run has finished an epoch yet: no values." in out.with_suffix(".md").read_text()


def test_a_run_is_complete_when_its_last_epoch_is_logged_even_if_an_earlier_record_was_lost(
    fake_python, tmp_path
):
    """Runs of code that saved before evaluating without a pending mark lost an epoch's record when a kill
    interrupted that evaluation; the study keeps them as finished (and trains nothing again)."""
    study = tmp_path / "study"
    for arm, f_noise in (("baseline", False), ("fnoise", True)):
        write_run(study / arm / "seed0", 0, f_noise, 1.0, 1.0, 0.3, epochs=3)
    metrics = study / "fnoise" / "seed0" / "metrics.jsonl"
    kept = [line for line in metrics.read_text().splitlines() if '"epoch": 0, "iteration": 10' not in line]
    metrics.write_text("\n".join(kept) + "\n")
    run = load_run(study / "fnoise" / "seed0")
    assert [r["epoch"] for r in run.epochs] == [1, 2]
    summary = summarize(group_runs(_runs(study)))
    assert summary["in_progress"] == [] and [arm["n"] for arm in summary["outcomes"]["arms"]] == [1, 1]
    assert train_arms([0], study, [], python=fake_python) == [study / "baseline" / "seed0", metrics.parent]
    assert not (study / "fnoise" / "seed0" / "argv.json").exists()  # kept, not trained again

    # Without its last epoch a run is in progress, however many records it has.
    metrics.write_text("\n".join(line for line in kept if '"epoch": 2, "iteration": 30' not in line) + "\n")
    assert summarize(group_runs(_runs(study)))["in_progress"][0]["seed"] == 0


def test_bad_runs_give_one_line_errors(study, tmp_path, capsys):
    (study / "baseline" / "seed1" / "metrics.jsonl").write_text('{"type": "iter"\n{"type": "iter"}\n')
    assert main([str(study / "baseline" / "seed1"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    metrics = study / "baseline" / "seed1" / "metrics.jsonl"
    assert err == f"error: {metrics}:1: not valid JSON (Expecting ',' delimiter)"

    (study / "fnoise" / "seed0" / "config.json").unlink()
    assert main([str(study / "fnoise" / "seed0"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {study / 'fnoise' / 'seed0' / 'config.json'}: missing") and "\n" not in err

    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()

    with pytest.raises(SystemExit) as exit_info:
        main([str(study / "fnoise" / "seed1")])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err


def test_same_arm_and_seed_twice_is_an_error(tmp_path):
    write_run(tmp_path / "a", 0, True, 1.0, 1.0, 0.3)
    write_run(tmp_path / "b", 0, True, 1.0, 1.0, 0.3)
    with pytest.raises(RunError, match="same arm .* and seed"):
        group_runs(_runs_of(tmp_path, "ab"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seed", "3"], "--seed is set by compare"),
        (["--f-noise"], "--f-noise is added by compare"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--seeds", "1", "1"], "--seeds must be distinct"),
    ],
)
def test_train_mode_checks_flags_before_training(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--train", "--output-dir", str(tmp_path / "study"), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def _mixed_precision_study(study: Path) -> None:
    """Seed 0's baseline trained in bfloat16, seed 1's in float32; their F-Noise runs and seed 2 are
    missing."""
    _with_precision(write_run(study / "baseline" / "seed0", 0, False, 1.0, 1.0, 0.3, amp=True), "bfloat16")
    _with_precision(write_run(study / "baseline" / "seed1", 1, False, 1.0, 1.0, 0.3, amp=True), "float32")


def test_each_seed_is_planned_in_the_precision_of_its_runs(tmp_path):
    study = tmp_path / "study"
    _mixed_precision_study(study)
    arms = [("baseline", []), ("fnoise", ["--f-noise"])]
    # where --amp gives bfloat16, seed 1 keeps float32 with --no-amp
    assert plan_seeds(study, arms, [0, 1, 2], "bfloat16") == {
        0: SeedPlan(),
        1: SeedPlan(flags=("--no-amp",)),
        2: SeedPlan(),
    }
    # where --amp gives float32, seed 0 (bfloat16) is left for a CPU with bfloat16 instructions
    plans = plan_seeds(study, arms, [0, 1, 2], "float32")
    assert plans[1] == plans[2] == SeedPlan()
    assert plans[0].skip == "its other runs trained in bfloat16; this machine's --amp gives float32"
    # a seed whose runs disagree is an error, naming both
    _with_precision(write_run(study / "fnoise" / "seed1", 1, True, 1.0, 1.0, 0.3, amp=True), "bfloat16")
    with pytest.raises(
        RunError,
        match=r"fnoise/seed1: trained in bfloat16, but .*baseline/seed1 of the same seed \(1\) in float32",
    ):
        plan_seeds(study, arms, [1], "float32")


@pytest.mark.parametrize("native_bf16", [False, True])
def test_train_mode_trains_each_seed_in_its_precision(
    native_bf16, fake_python, tmp_path, monkeypatch, capsys
):
    """A study whose seed 0 trained in bfloat16 and seed 1 in float32, continued where --amp gives float32
    (a CPU without bfloat16 instructions): seeds 1 and 2 train, seed 0's missing run is left untrained and
    compare exits 3 after writing the comparison. Where --amp gives bfloat16, everything trains, seed 1
    with --no-amp."""
    monkeypatch.setattr("fnoise_maskrcnn.engine.state.cpu_has_bfloat16", lambda: native_bf16)
    monkeypatch.setenv("FAKE_PRECISION", "bfloat16" if native_bf16 else "float32")
    real_train_arms = train_arms
    monkeypatch.setattr(
        "fnoise_maskrcnn.compare.train_arms", lambda *a, **k: real_train_arms(*a, **k, python=fake_python)
    )
    study = tmp_path / "study"
    _mixed_precision_study(study)
    argv = ["--train", "--seeds", "0", "1", "2", "--devices", "cpu", "--output-dir", str(study)]
    assert main(argv) == (0 if native_bf16 else 3)
    out, err = capsys.readouterr()
    assert (study / "fnoise" / "seed0").exists() == native_bf16
    if not native_bf16:
        assert "[2/6] fnoise seed 0: left untrained here: its other runs trained in bfloat16" in out
        assert err.strip() == (
            "incomplete: seed(s) 0 left untrained here (its other runs trained in bfloat16; this "
            "machine's --amp gives float32); run the same command where --amp gives that precision"
        )
    argv_of = {d: json.loads((study / d / "argv.json").read_text()) for d in ("fnoise/seed1", "fnoise/seed2")}
    assert ("--no-amp" in argv_of["fnoise/seed1"]) == native_bf16
    assert "--no-amp" not in argv_of["fnoise/seed2"]
    assert (study / "comparison.json").is_file()


FAKE_TRAIN = """\
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
assert argv[:2] == ["-m", "fnoise_maskrcnn.train"], argv
if "--fail" in argv:
    print("error: --fail: told to fail", file=sys.stderr)
    sys.exit(2)
out = Path(argv[argv.index("--output-dir") + 1])
seed = int(argv[argv.index("--seed") + 1])
out.mkdir(parents=True)
(out / "argv.json").write_text(json.dumps(argv))
config = {"seed": seed, "output_dir": str(out), "f_noise": "--f-noise" in argv, "f_noise_std": 0.1,
          "f_noise_mode": "elementwise", "f_noise_levels": None}
(out / "config.json").write_text(json.dumps(config))
record = {"type": "epoch", "epoch": 0, "iteration": 1, "train": {"loss": 1.0 + seed}, "val": None,
          "bbox": None, "segm": None, "f_noise_nsr": None}
(out / "metrics.jsonl").write_text(json.dumps(record) + "\\n")
if os.environ.get("FAKE_PRECISION"):  # what --amp resolves to on the machine being faked
    precision = "float32" if "--no-amp" in argv else os.environ["FAKE_PRECISION"]
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"type": "run", "device": "cpu", "precision": precision}) + "\\n")
print("trained")
"""


@pytest.fixture
def fake_python(tmp_path) -> str:
    """An executable standing in for ``python``: it records its arguments and writes a one-epoch run."""
    return write_fake_python(tmp_path, FAKE_TRAIN)


def test_train_arms_runs_both_arms_per_seed_with_the_same_flags(fake_python, tmp_path, capsys):
    study = tmp_path / "study"
    run_dirs = train_arms([3, 5], study, ["--epochs", "2", "--lr", "0.01"], python=fake_python)

    assert run_dirs == [
        study / "baseline" / "seed3",
        study / "fnoise" / "seed3",
        study / "baseline" / "seed5",
        study / "fnoise" / "seed5",
    ]
    for run_dir in run_dirs:
        argv = json.loads((run_dir / "argv.json").read_text())
        seed = run_dir.name.removeprefix("seed")
        # study defaults first, the user's flags after them (so they win), then seed and directory
        assert argv[2 : 2 + len(STUDY_TRAIN_FLAGS)] == list(STUDY_TRAIN_FLAGS)
        rest = argv[2 + len(STUDY_TRAIN_FLAGS) :]
        expected = ["--epochs", "2", "--lr", "0.01", "--seed", seed, "--output-dir", str(run_dir)]
        assert rest == expected + (["--f-noise"] if run_dir.parent.name == "fnoise" else [])
    log = (study / "logs" / "fnoise-seed5.log").read_text().splitlines()
    assert "trained" in log
    # the log starts with the command as a reader reruns it, not this machine's interpreter path
    argv = json.loads((study / "fnoise" / "seed5" / "argv.json").read_text())  # without the interpreter
    assert shlex.split(log[0]) == ["python", *argv]
    arms = group_runs([load_run(d) for d in run_dirs])
    assert [(arm.label, arm.seeds) for arm in arms] == [
        ("baseline", [3, 5]),
        ("F-Noise σ=0.1 (elementwise, all levels)", [3, 5]),
    ]
    assert "[4/4] fnoise seed 5" in capsys.readouterr().out


def test_train_arms_stops_at_a_failed_run(fake_python, tmp_path):
    failed = r"training baseline seed 0 failed \(exit 2; see .*baseline-seed0.log\)"
    with pytest.raises(RuntimeError, match=failed):
        train_arms([0], tmp_path / "study", ["--fail"], python=fake_python)
    assert not (tmp_path / "study" / "fnoise").exists()


@pytest.mark.slow
def test_compare_train_end_to_end(tmp_path):
    """The real command: both arms, one seed, two iterations each, then the figure and tables."""
    study = tmp_path / "study"
    command = [
        sys.executable,
        "-m",
        "fnoise_maskrcnn.compare",
        "--train",
        "--seeds",
        "0",
        "--output-dir",
        str(study),
        "--epochs",
        "1",
        "--max-images",
        "2",
        "--max-val-images",
        "1",
        "--min-size",
        "96",
        "--max-size",
        "96",
        "--f-noise-std",  # 0: the arms differ in configuration only, so their first steps must agree
        "0",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr
    summary = json.loads((study / "comparison.json").read_text())
    labels = [arm["label"] for arm in summary["arms"]]
    assert labels == ["baseline", "F-Noise σ=0 (elementwise, all levels)"]
    assert all(arm["metrics"]["train_loss"]["n"] == 1 for arm in summary["arms"])
    assert summary["differences"][0]["verdict"] == "seed noise unknown (one seed)"
    with Image.open(study / "comparison.png") as png:
        assert png.format == "PNG"
    baseline = load_run(study / "baseline" / "seed0")
    noise = load_run(study / "fnoise" / "seed0")
    assert baseline.config["f_noise"] is False and noise.config["f_noise"] is True
    assert len(baseline.iterations) == len(noise.iterations) >= 1
    # Same seed: same initial weights, data and sampler draws. With σ = 0 the first iteration is the
    # same computation. (Any σ > 0 moves a random network's first loss by a few percent: even σ = 0.001
    # changes which proposals the RPN keeps.)
    assert noise.iterations[0]["loss"] == baseline.iterations[0]["loss"]
    assert noise.epochs[0]["f_noise_nsr"] == {} and baseline.epochs[0]["f_noise_nsr"] is None  # σ = 0
    # compare's study defaults measure the clean training loss (on the 2 training images)
    assert set(noise.epochs[0]["train_clean"]) == {"loss", *COMPONENTS}
    assert summary["outcomes"]["gap_training"] == "train_clean"


def test_train_arms_without_study_defaults_passes_only_the_users_flags(fake_python, tmp_path):
    (run_dir, _) = train_arms([0], tmp_path / "study", ["--epochs", "1"], defaults=(), python=fake_python)
    argv = json.loads((run_dir / "argv.json").read_text())
    expected = ["-m", "fnoise_maskrcnn.train", "--epochs", "1", "--seed", "0", "--output-dir", str(run_dir)]
    assert argv == expected
