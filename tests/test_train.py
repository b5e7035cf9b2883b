"""``python -m fnoise_maskrcnn.train``: real (tiny) training runs, exact resume, failure handling, flags."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _training import TINY_MODEL, Inject, data_flags, read_metrics, tensorboard_scalars, two_image_run
from fnoise_maskrcnn import train
from fnoise_maskrcnn.arguments import parse
from fnoise_maskrcnn.device import processor_name
from fnoise_maskrcnn.distributed import init_distributed
from fnoise_maskrcnn.engine import LOSS_NAMES
from fnoise_maskrcnn.engine.run import Run
from fnoise_maskrcnn.io.checkpoint import load_checkpoint, make_checkpoint


def test_training_lowers_the_loss(synthetic_coco, tmp_path):
    out = tmp_path / "run"
    argv = [*two_image_run(synthetic_coco, epochs=8), "--lr", "0.02", "--warmup-iters", "0"]
    argv += ["--output-dir", str(out)]
    assert train.main(argv) == 0
    records = read_metrics(out)
    iters = [r for r in records if r["type"] == "iter"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["iteration"] for r in iters] == list(range(8))
    assert [r["epoch"] for r in epochs] == list(range(8))
    first, last = iters[0]["loss"], min(r["loss"] for r in iters[-2:])
    assert last < 0.7 * first, f"loss went from {first:.3f} to {last:.3f}"
    for record in iters:
        assert math.isclose(record["loss"], sum(record[k] for k in LOSS_NAMES), rel_tol=1e-4)
    assert epochs[-1]["val"] is None and epochs[-1]["segm"] is None and epochs[-1]["f_noise_nsr"] is None
    assert not (out / "best.pth").exists()  # no validation set, no best
    (run_record,) = [r for r in records if r["type"] == "run"]
    assert run_record["device"] == "cpu" and run_record["processor"] == processor_name("cpu") != ""
    checkpoint = torch.load(out / "last.pth", weights_only=True)
    assert checkpoint["epoch"] == 8 and checkpoint["iteration"] == 8
    assert checkpoint["model_config"]["model_kwargs"]["box_batch_size_per_image"] == 64
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["seed"] == 0 and config["model"]["model"] == "mobilenet_v3"
    assert config["model"]["f_noise"]["enabled"] is False and config["data"]["batch_size"] == 2
    # The configuration is saved once, and the checkpoint carries the same object.
    assert checkpoint["config"] == config
    scalars = tensorboard_scalars(out)
    assert [step for step, _ in scalars["train/loss"]] == list(range(8))
    assert [value for _, value in scalars["train/loss"]] == pytest.approx(
        [r["loss"] for r in iters], rel=1e-6
    )
    assert [step for step, _ in scalars["epoch_train/loss"]] == list(range(1, 9))


def test_a_fresh_run_sets_aside_the_metrics_of_a_run_with_no_checkpoint(synthetic_coco, tmp_path, capsys):
    """A run killed in its first epoch leaves metrics.jsonl but no last.pth; started again (as compare does),
    the new run writes a clean metrics.jsonl and the old records are kept beside it, not appended to."""
    out = tmp_path / "run"
    out.mkdir()
    stale = [{"type": "iter", "epoch": 0, "iteration": i, "loss": 9.0} for i in range(3)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stale))
    (out / "metrics.jsonl.1").write_text("older\n")
    assert train.main([*two_image_run(synthetic_coco, epochs=1), "--output-dir", str(out)]) == 0
    records = [r for r in read_metrics(out) if r["type"] != "run"]
    assert [(r["type"], r["iteration"]) for r in records] == [("iter", 0), ("epoch", 1)]
    assert records[0]["loss"] != 9.0
    assert [json.loads(line) for line in (out / "metrics.jsonl.2").read_text().splitlines()] == stale
    assert (out / "metrics.jsonl.1").read_text() == "older\n"
    assert f"kept as {out / 'metrics.jsonl.2'}" in capsys.readouterr().out


def test_amp_on_a_cpu_without_bfloat16_trains_in_float32_and_says_so(
    synthetic_coco, tmp_path, monkeypatch, capsys
):
    """Emulated bfloat16 is an order of magnitude slower than float32, so --amp (on in the synthetic and
    cpu-scratch recipes) trains such a CPU in float32: the same numbers as --no-amp, recorded as such."""
    monkeypatch.setattr("fnoise_maskrcnn.engine.state.cpu_has_bfloat16", lambda: False)
    argv = [*two_image_run(synthetic_coco, epochs=1), "--deterministic"]
    runs = {}
    for amp in ("--amp", "--no-amp"):
        out = tmp_path / amp
        assert train.main([*argv, amp, "--output-dir", str(out)]) == 0
        runs[amp] = read_metrics(out)
    console = capsys.readouterr().out
    assert "float32 (--amp is off on this CPU: it has no bfloat16 instructions" in console
    for records in runs.values():
        assert [r["precision"] for r in records if r["type"] == "run"] == ["float32"]
    losses = [[r["loss"] for r in records if r["type"] == "iter"] for records in runs.values()]
    assert losses[0] == losses[1]


def test_a_run_is_not_resumed_in_another_precision(synthetic_coco, tmp_path, monkeypatch, capsys):
    """A float32 run (--amp on a CPU without bfloat16 instructions) resumed under --amp where the CPU has
    them would switch to bfloat16 mid-run: refused with one line naming the checkpoint and the cure,
    which resumes it."""
    out = tmp_path / "run"
    monkeypatch.setattr("fnoise_maskrcnn.engine.state.cpu_has_bfloat16", lambda: False)
    argv = [*two_image_run(synthetic_coco, epochs=1), "--amp", "--output-dir", str(out)]
    assert train.main(argv) == 0
    monkeypatch.setattr("fnoise_maskrcnn.engine.state.cpu_has_bfloat16", lambda: True)
    capsys.readouterr()
    resume = ["--resume", "--output-dir", str(out), "--epochs", "2"]
    assert train.main(resume) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"{out / 'last.pth'}: trained in float32, but this machine would continue it in bfloat16" in err
    assert err.endswith("resume it with --no-amp")
    assert [r["epoch"] for r in read_metrics(out) if r["type"] == "epoch"] == [0]  # nothing lost or added
    assert train.main([*resume, "--no-amp"]) == 0
    assert [r["precision"] for r in read_metrics(out) if r["type"] == "run"] == ["float32", "float32"]
    assert [r["epoch"] for r in read_metrics(out) if r["type"] == "epoch"] == [0, 1]


def test_clean_training_loss_is_measured_as_the_validation_loss_is(synthetic_coco, tmp_path):
    """Trained on its own validation images, the clean training loss equals the validation loss exactly
    (validation transforms, F-Noise off, the same fixed sampler stream), and measuring it changes no
    training number."""
    images = str(synthetic_coco.val_images)
    ann = str(synthetic_coco.val_ann)
    argv = [
        *("--train-ann", ann, "--train-images", images, "--val-ann", ann, "--val-images", images),
        *("--max-images", "2", "--max-val-images", "2", "-b", "2", "--epochs", "2"),
        *TINY_MODEL,
        *("--warmup-iters", "0", "--workers", "0", "--f-noise", "--f-noise-std", "0.5"),
    ]
    assert train.main([*argv, "--train-loss-images", "2", "--output-dir", str(tmp_path / "clean")]) == 0
    assert train.main([*argv, "--output-dir", str(tmp_path / "plain")]) == 0
    clean, plain = read_metrics(tmp_path / "clean"), read_metrics(tmp_path / "plain")
    epochs = [r for r in clean if r["type"] == "epoch"]
    assert len(epochs) == 2
    for record in epochs:
        assert record["train_clean"] == record["val"]
        assert set(record["train_clean"]) == {"loss", *LOSS_NAMES}
        assert record["train_clean"]["loss"] != record["train"]["loss"]  # the epoch mean, F-Noise on
    plain_epochs = [r for r in plain if r["type"] == "epoch"]
    assert all("train_clean" not in r for r in plain_epochs)
    assert [r["val"] for r in plain_epochs] == [r["val"] for r in epochs]
    assert [r["loss"] for r in plain if r["type"] == "iter"] == [
        r["loss"] for r in clean if r["type"] == "iter"
    ]
    scalars = tensorboard_scalars(tmp_path / "clean")
    assert [v for _, v in scalars["epoch_train_clean/loss"]] == pytest.approx(
        [r["val"]["loss"] for r in epochs]
    )


def test_seed_gives_same_start_with_and_without_f_noise(synthetic_coco):
    """The comparison's premise: same --seed -> same initial weights and the same first batch, whatever
    the F-Noise settings; only the noise differs (its own generator)."""
    common = [
        *data_flags(synthetic_coco, val=False),
        *TINY_MODEL,
        "--max-images",
        "4",
        "-b",
        "2",
        "--workers",
        "0",
    ]
    ctx = init_distributed("cpu")
    runs = [
        Run.create(parse([*common, *flags, "--output-dir", "unused"]).config, ctx)
        for flags in ([], ["--f-noise", "--f-noise-std", "0.3"], ["--seed", "1"])
    ]
    plain, noisy, other_seed = runs
    assert noisy.model.backbone.f_noise.std == 0.3 and plain.model.backbone.f_noise.std == 0.0
    weights = [run.model.state_dict() for run in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    batches = [run.data_rng.next(iter(run.train_loader)) for run in runs]
    assert [t["image_id"] for t in batches[0][1]] == [t["image_id"] for t in batches[1][1]]
    assert all(torch.equal(a, b) for a, b in zip(batches[0][0], batches[1][0]))
    # The RPN/ROI sampling stream is the same too.
    assert torch.equal(torch.get_rng_state(), torch.get_rng_state())


def test_non_finite_loss_stops_with_last_good_state(synthetic_coco, tmp_path, capsys):
    out = tmp_path / "nan"
    argv = [
        *data_flags(synthetic_coco, val=False),
        *TINY_MODEL,
        "--max-images",
        "4",
        "-b",
        "2",
        "--epochs",
        "3",
        "--workers",
        "0",
        "--output-dir",
        str(out),
    ]
    assert train.main(argv, extra_hooks=[Inject(at_step=2, action="nan")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: non-finite loss at iteration 2 (epoch 1)")
    assert "loss_mask=nan" in err and "loss_classifier=" in err and str(out / "last.pth") in err
    checkpoint = load_checkpoint(out / "last.pth")
    assert checkpoint["iteration"] == 2 and checkpoint["train_state"]["epoch_iteration"] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--train-loss-images", "-1"], "--train-loss-images must be >= 0"),
        (["--model", "vgg"], "invalid choice: 'vgg'"),
        (["--f-noise-mode", "pixel"], "invalid choice: 'pixel'"),
        (["--f-noise-std", "-1"], "--f-noise-std must be a finite number >= 0"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--min-size", "300", "--max-size", "200"], "must not exceed --max-size"),
        (["--train-ann", "a.json"], "--train-ann and --train-images go together"),
        (["--data-path", "x", "--train-ann", "a", "--train-images", "b"], "not both"),
        (["--resume"], "--resume needs --output-dir"),
        (["--trainable-backbone-layers", "6"], "must be in 0..5"),
        (["--model-kwarg", "no-equals"], "expected KEY=VALUE"),
        (["--lr-steps", "5", "2"], "must be increasing"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_flags_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    assert exc.value.code == 2
    error_line = capsys.readouterr().err.strip().splitlines()[-1]  # not the usage lines above it
    assert error_line.startswith("python -m fnoise_maskrcnn.train: error: ") and message in error_line


def test_bad_data_is_a_one_line_error(tmp_path, capsys):
    assert train.main(["--data-path", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: --data-path {tmp_path}")


def test_resume_refuses_a_changed_model(synthetic_coco, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    torch.save(make_checkpoint({}, {}, [], args={"model": "mobilenet_v3"}), out / "last.pth")
    with pytest.raises(SystemExit):
        train.main(["--resume", "--output-dir", str(out), "--model", "resnet50"])
    assert "--model resnet50 differs from the run's mobilenet_v3" in capsys.readouterr().err


def test_processor_name_reads_the_cpu_model_and_falls_back_without_cpuinfo(tmp_path):
    """Runs record the processor so that two runs of one seed that differ in floating-point kernels (another
    CPU model) can be told apart: the ``model name`` line of cpuinfo, else what ``platform`` knows."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: Fake\nmodel name\t: Fake CPU 9000 @ 3.00GHz\n")
    assert processor_name("cpu", cpuinfo) == "Fake CPU 9000 @ 3.00GHz"
    assert processor_name(torch.device("cpu"), tmp_path / "missing") != ""
