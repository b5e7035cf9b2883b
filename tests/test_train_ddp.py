"""``torchrun --nproc_per_node=2 -m fnoise_maskrcnn.train``: DDP with gloo on the CPU."""

from __future__ import annotations

import json
import os
import subprocess

import torch

from _training import TINY_MODEL, TORCHRUN_TWO_PROCESSES, data_flags, tensorboard_scalars


def test_two_process_ddp_on_cpu(synthetic_coco, tmp_path):
    out = tmp_path / "ddp"
    command = [
        *TORCHRUN_TWO_PROCESSES,
        "-m",
        "fnoise_maskrcnn.train",
        *data_flags(synthetic_coco),
        *TINY_MODEL,
        "--max-images",
        "4",
        "-b",
        "1",
        "--epochs",
        "1",
        "--f-noise",
        "--workers",
        "0",
        "--print-freq",
        "1",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    config = json.loads((out / "config.json").read_text())
    assert config["optim"]["lr"] == 0.02 * 2 / 16  # the reference lr scaled by the total batch (2 x 1)
    # 4 images, 2 processes, 1 image each per step: 2 iterations, each logged once (rank 0 only).
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "run" and records[0]["world_size"] == 2
    logged = [(r["type"], r["iteration"]) for r in records[1:]]
    assert logged == [("iter", 0), ("iter", 1), ("epoch", 2)]
    epoch = records[-1]
    # Evaluation gathered both shards: COCOeval saw the 2 validation images, and the losses are finite means.
    assert epoch["val_images_evaluated"] == 2
    assert set(epoch["segm"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert epoch["val"]["loss"] > 0 and set(epoch["f_noise_nsr"]) == {"0", "1"}
    assert len([p for p in out.iterdir() if p.name.startswith("events.out.tfevents")]) == 1  # rank 0 only
    assert [step for step, _ in tensorboard_scalars(out)["train/loss"]] == [0, 1]
    checkpoint = torch.load(out / "last.pth", weights_only=True)
    assert checkpoint["iteration"] == 2 and len(checkpoint["rng"]) == 2  # each rank's random streams
    assert not any(key.startswith("module.") for key in checkpoint["model"])
    assert result.stdout.count("Epoch: [0] Total time") == 1  # only rank 0 prints
