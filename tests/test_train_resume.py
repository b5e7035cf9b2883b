"""Exact resume of ``python -m fnoise_maskrcnn.train``: straight vs. stopped and resumed runs."""

from __future__ import annotations

import signal

import pytest
import torch

from _training import TINY_MODEL, Inject, data_flags, read_metrics
from fnoise_maskrcnn import train
from fnoise_maskrcnn.io.checkpoint import load_checkpoint
from fnoise_maskrcnn.io.model_io import model_from_checkpoint


def test_resume_is_exact(synthetic_coco, tmp_path):
    """2 epochs straight == 1 epoch, resume, SIGINT in the middle of epoch 2, resume again (CPU,
    deterministic)."""
    common = [
        *data_flags(synthetic_coco),
        *TINY_MODEL,
        "--max-images",
        "4",
        "-b",
        "2",
        "--f-noise",
        "--lr",
        "0.01",
        "--lr-steps",
        "1",
        "--warmup-iters",
        "2",
        "--workers",
        "0",
        "--deterministic",
        "--seed",
        "3",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train.main([*common, "--epochs", "2", "--output-dir", str(straight)]) == 0

    assert train.main([*common, "--epochs", "1", "--output-dir", str(split)]) == 0
    # SIGINT in the first iteration after resuming (epoch 1, batch 0): saved after that iteration.
    sigint = [Inject(at_step=0, action="sigint")]
    assert (
        train.main(["--resume", "--epochs", "2", "--output-dir", str(split)], sigint) == 128 + signal.SIGINT
    )
    interrupted = load_checkpoint(split / "last.pth")
    assert (
        interrupted["epoch"],
        interrupted["iteration"],
        interrupted["train_state"]["epoch_iteration"],
    ) == (1, 3, 1)
    assert train.main(["--resume", "--output-dir", str(split)]) == 0

    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(split / "last.pth")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["iteration"] == b["iteration"] == 4
    assert a["lr_scheduler"]["last_epoch"] == b["lr_scheduler"]["last_epoch"] == 4
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    # The metrics of both runs agree too: the resumed run replaced what the interrupted one logged.
    ma, mb = ([r for r in read_metrics(d) if r["type"] != "run"] for d in (straight, split))
    assert [(r["type"], r["iteration"]) for r in ma] == [(r["type"], r["iteration"]) for r in mb]
    assert ma[-1]["train"] == pytest.approx(mb[-1]["train"], rel=1e-6)
    assert ma[-1]["segm"] == mb[-1]["segm"]
    nsr = ma[-1]["f_noise_nsr"]
    assert set(nsr) == {"0", "1"} and all(0.05 < v < 0.15 for v in nsr.values())  # std 0.1, elementwise
    # best.pth is a complete checkpoint: the model rebuilds from it alone.
    model, checkpoint = model_from_checkpoint(straight / "best.pth")
    assert [c["name"] for c in checkpoint["categories"]] == ["circle", "triangle", "rectangle", "star"]
    assert not model.training
    assert "optimizer" not in checkpoint and checkpoint["config"] == a["config"]  # the model alone
