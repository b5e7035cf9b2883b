"""``python -m fnoise_maskrcnn.train``: real (tiny) training runs, exact resume, failure handling, flags."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from fnoise_maskrcnn import train
from fnoise_maskrcnn.checkpoint import load_checkpoint

# Small heads keep a CPU iteration at about a second: the cost of Mask R-CNN on tiny images is in its heads.
TINY_MODEL = [
    "--model",
    "mobilenet_v3",
    "--min-size",
    "128",
    "--max-size",
    "160",
    "--model-kwarg",
    "box_batch_size_per_image=64",
    "--model-kwarg",
    "rpn_pre_nms_top_n_train=300",
    "--model-kwarg",
    "rpn_post_nms_top_n_train=150",
    "--model-kwarg",
    "box_detections_per_img=20",
]


def data_flags(data, val: bool = True) -> list[str]:
    flags = ["--train-ann", str(data.train_ann), "--train-images", str(data.train_images)]
    if val:
        flags += [
            "--val-ann",
            str(data.val_ann),
            "--val-images",
            str(data.val_images),
            "--max-val-images",
            "2",
        ]
    return flags


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


class TrainingHook:
    """Wraps ``train.build_model`` to act at a given training forward pass (counted across the run)."""

    def __init__(self, monkeypatch, at_call: int, action: str) -> None:
        self.calls = 0
        self.at_call = at_call
        self.action = action
        build_model = train.build_model

        def build_and_hook(*args, **kwargs):
            model = build_model(*args, **kwargs)
            model.roi_heads.register_forward_hook(self._hook)
            return model

        monkeypatch.setattr(train, "build_model", build_and_hook)

    def _hook(self, module, inputs, output):
        if not (module.training and torch.is_grad_enabled()):  # validation losses run without gradients
            return output
        call = self.calls
        self.calls += 1
        if call != self.at_call:
            return output
        if self.action == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
            return output
        detections, losses = output
        return detections, {k: v * float("nan") if k == "loss_mask" else v for k, v in losses.items()}


def test_training_lowers_the_loss(synthetic_coco, tmp_path):
    out = tmp_path / "run"
    argv = [
        *data_flags(synthetic_coco, val=False),
        *TINY_MODEL,
        "--max-images",
        "2",
        "-b",
        "2",
        "--epochs",
        "8",
        "--lr",
        "0.02",
        "--warmup-iters",
        "0",
        "--workers",
        "0",
        "--print-freq",
        "1",
        "--output-dir",
        str(out),
    ]
    assert train.main(argv) == 0
    records = read_metrics(out)
    iters = [r for r in records if r["type"] == "iter"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["iteration"] for r in iters] == list(range(8))
    assert [r["epoch"] for r in epochs] == list(range(8))
    first, last = iters[0]["loss"], min(r["loss"] for r in iters[-2:])
    assert last < 0.7 * first, f"loss went from {first:.3f} to {last:.3f}"
    for record in iters:
        assert math.isclose(record["loss"], sum(record[k] for k in train.LOSS_NAMES), rel_tol=1e-4)
    assert epochs[-1]["val"] is None and epochs[-1]["segm"] is None and epochs[-1]["f_noise_nsr"] is None
    assert not (out / "best.pth").exists()  # no validation set, no best
    checkpoint = torch.load(out / "last.pth", weights_only=True)
    assert checkpoint["epoch"] == 8 and checkpoint["iteration"] == 8
    assert checkpoint["model_config"]["model_kwargs"]["box_batch_size_per_image"] == 64
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["f_noise"] is False and config["model"] == "mobilenet_v3"
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())


def test_seed_gives_same_start_with_and_without_f_noise(synthetic_coco, tmp_path):
    """The comparison's premise: same --seed -> same initial weights and data, whatever --f-noise."""
    common = [
        *data_flags(synthetic_coco, val=False),
        *TINY_MODEL,
        "--max-images",
        "2",
        "-b",
        "2",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--print-freq",
        "1",
        "--lr",
        "1e-9",
        "--warmup-iters",
        "0",
    ]
    assert train.main([*common, "--output-dir", str(tmp_path / "plain")]) == 0
    assert (
        train.main([*common, "--f-noise", "--f-noise-std", "0", "--output-dir", str(tmp_path / "noise0")])
        == 0
    )
    plain, noise0 = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "noise0")
    # With std 0 the F-Noise run computes exactly the plain run: same weights, same images, same flips.
    assert plain[0]["loss"] == noise0[0]["loss"]


def test_non_finite_loss_stops_with_last_good_state(synthetic_coco, tmp_path, monkeypatch, capsys):
    out = tmp_path / "nan"
    TrainingHook(monkeypatch, at_call=2, action="nan")
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
    assert train.main(argv) == 1
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
    assert message in capsys.readouterr().err


def test_bad_data_is_a_one_line_error(tmp_path, capsys):
    assert train.main(["--data-path", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: --data-path {tmp_path}")


def test_resume_refuses_a_changed_model(synthetic_coco, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    torch.save(
        {
            "format": "fnoise_maskrcnn",
            "version": 1,
            "model": {},
            "model_config": {},
            "categories": [],
            "args": {"model": "mobilenet_v3"},
        },
        out / "last.pth",
    )
    with pytest.raises(SystemExit):
        train.main(["--resume", "--output-dir", str(out), "--model", "resnet50"])
    assert "--model resnet50 differs from the run's mobilenet_v3" in capsys.readouterr().err
