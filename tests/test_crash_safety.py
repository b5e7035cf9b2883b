"""A training killed at any moment (kill -9, SIGTERM) loses at most ``--checkpoint-every`` iterations, and
the resumed run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _training import data_flags
from fnoise_maskrcnn.io.checkpoint import load_checkpoint

# 2 epochs x 2 iterations on 4 tiny images, evaluated on 2 images after each epoch; exact with --workers 0.
COMMON = [
    "--model",
    "mobilenet_v3",
    "--min-size",
    "96",
    "--max-size",
    "96",
    "--max-images",
    "4",
    "-b",
    "2",
    "--max-val-images",
    "2",
    "--epochs",
    "2",
    "--warmup-iters",
    "1",
    "--lr",
    "0.01",
    "--workers",
    "0",
    "--no-amp",
    "--f-noise",
    "--f-noise-schedule",
    "linear",
    "--f-noise-std-end",
    "0.02",
    "--deterministic",
    "--seed",
    "5",
    "--print-freq",
    "1",
    "--checkpoint-every",
    "1",
    "--model-kwarg",
    "box_batch_size_per_image=32",
    "--model-kwarg",
    "rpn_post_nms_top_n_train=100",
]


def _train(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "fnoise_maskrcnn.train", *argv]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _records(out: Path, kind: str) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return [r for r in records if r.get("type") == kind]


def _saved_iteration(out: Path) -> int:
    """The iteration of ``out/last.pth`` (0 while there is none)."""
    try:
        return load_checkpoint(out / "last.pth")["iteration"]
    except Exception:  # not written yet
        return 0


def _wait_for(condition, timeout: float = 600.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def straight(synthetic_coco, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    process = _train([*data_flags(synthetic_coco), *COMMON, "--output-dir", str(out)])
    assert process.wait() == 0, process.stderr.read()[-2000:]
    return out


def _assert_same_result(straight: Path, resumed: Path) -> None:
    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(resumed / "last.pth")
    assert a["iteration"] == b["iteration"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # sigma is a function of the iteration: the same schedule after a resume
    sigmas = [[r["f_noise_std"] for r in _records(run, "iter")] for run in (straight, resumed)]
    assert sigmas[0] == sigmas[1] and sigmas[0][0] == 0.1 and sigmas[0][-1] == pytest.approx(0.02)
    epochs_a, epochs_b = _records(straight, "epoch"), _records(resumed, "epoch")
    assert [r["epoch"] for r in epochs_b] == [0, 1]
    assert [r["segm"] for r in epochs_a] == [r["segm"] for r in epochs_b]


def _kill_and_resume(synthetic_coco, straight: Path, out: Path, when, delay: float = 0.0) -> int:
    """Starts the run, waits for ``when(out)``, then ``delay`` seconds, kills it with SIGKILL, resumes it to
    the end and compares with the uninterrupted run. Returns the iterations lost (logged but not saved)."""
    process = _train([*data_flags(synthetic_coco), *COMMON, "--output-dir", str(out)])
    _wait_for(lambda: when(out) or process.poll() is not None)
    time.sleep(delay)
    process.kill()
    process.wait()
    done = len(_records(out, "iter"))  # iterations whose record was written
    if not (out / "last.pth").exists():  # killed before the first save: nothing to resume
        assert done <= 1
        return done
    lost = done - load_checkpoint(out / "last.pth")["iteration"]
    resumed = _train(["--resume", "--output-dir", str(out)])
    assert resumed.wait() == 0, resumed.stderr.read()[-2000:]
    _assert_same_result(straight, out)
    return lost


def test_kill_9_during_evaluation_loses_nothing(synthetic_coco, straight, tmp_path):
    """Killed while the first epoch is evaluated: the epoch was saved before; resuming evaluates it."""
    lost = _kill_and_resume(
        synthetic_coco, straight, tmp_path / "run", lambda out: _saved_iteration(out) >= 2
    )
    assert lost == 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_kill_9_at_a_random_moment_loses_at_most_n_iterations(synthetic_coco, straight, tmp_path, seed):
    """``--checkpoint-every 1``: whatever the moment (training, saving, evaluating), at most 1 iteration is
    lost, and the resumed run ends bit-identical to the uninterrupted one."""
    delay = random.Random(seed).uniform(0.0, 3.0)
    lost = _kill_and_resume(
        synthetic_coco, straight, tmp_path / "run", lambda out: len(_records(out, "iter")) >= 1, delay=delay
    )
    assert lost <= 1


def test_sigterm_during_evaluation_exits_within_seconds_and_resume_completes(
    synthetic_coco, straight, tmp_path
):
    out = tmp_path / "run"
    process = _train([*data_flags(synthetic_coco), *COMMON, "--output-dir", str(out)])
    _wait_for(lambda: len(_records(out, "iter")) >= 2 or process.poll() is not None)
    time.sleep(0.3)  # the epoch-end save, then evaluation
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    code = process.wait()
    assert code == 128 + signal.SIGTERM, process.stderr.read()[-2000:]
    assert time.time() - sent < 10
    assert load_checkpoint(out / "last.pth")["iteration"] in (2, 3)  # the first epoch is never lost
    resumed = _train(["--resume", "--output-dir", str(out)])
    assert resumed.wait() == 0, resumed.stderr.read()[-2000:]
    _assert_same_result(straight, out)
