"""Engine pieces without a model: lr schedule, data random stream, batch skipping, stop signal, metrics
files."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch.utils.data import DataLoader

from fnoise_maskrcnn.data.loader import GroupedBatchSampler, SeededRandomSampler
from fnoise_maskrcnn.engine import DataRng, LrSchedule, StopSignal, autocast, skip_batches
from fnoise_maskrcnn.engine.state import amp_precision, cpu_has_bfloat16
from fnoise_maskrcnn.metrics_log import truncate_metrics


def test_warmup_then_multistep():
    schedule = LrSchedule("multistep", iters_per_epoch=10, total_iters=50, milestones=[2, 4], warmup_iters=5)
    assert schedule(0) == pytest.approx(0.001)
    assert schedule(1) == pytest.approx(0.001 * 0.8 + 0.2)
    assert [schedule(i) for i in (5, 19)] == [1.0, 1.0]
    assert schedule(20) == pytest.approx(0.1) and schedule(39) == pytest.approx(0.1)
    assert schedule(40) == pytest.approx(0.01)


def test_cosine_goes_to_zero():
    schedule = LrSchedule("cosine", iters_per_epoch=10, total_iters=100)
    assert schedule(0) == 1.0
    assert schedule(50) == pytest.approx(0.5)
    assert schedule(100) == pytest.approx(0.0, abs=1e-12)


def test_schedule_survives_a_weights_only_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, LrSchedule("multistep", 4, 8, [1], warmup_iters=2)
    )
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    torch.save({"s": scheduler.state_dict()}, tmp_path / "s.pth")
    state = torch.load(tmp_path / "s.pth", weights_only=True)["s"]
    fresh = torch.optim.lr_scheduler.LambdaLR(optimizer, LrSchedule("cosine", 1, 1))
    fresh.load_state_dict(state)
    assert fresh.last_epoch == 3 and fresh.lr_lambdas[0].milestones == [1]


def test_data_rng_is_separate_from_the_global_stream():
    def draws():
        while True:
            yield torch.rand(3)

    torch.manual_seed(0)
    expected_global = torch.rand(2)
    torch.manual_seed(0)
    rng = DataRng(123)
    first = rng.next(draws())
    assert not torch.equal(first, expected_global[:1])
    assert torch.equal(torch.rand(2), expected_global)  # the global stream did not move
    again = DataRng(123)
    assert torch.equal(again.next(draws()), first)
    assert not torch.equal(rng.next(draws()), first)  # the data stream moves on


def test_skip_batches_loads_only_the_rest():
    loaded = []

    class Recording(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            loaded.append(i)
            return i

        def aspect_ratios(self):
            return [1.0] * 10

    dataset = Recording()
    sampler = SeededRandomSampler(dataset, seed=1)
    loader = DataLoader(dataset, batch_sampler=GroupedBatchSampler(sampler, [0] * 10, 3), collate_fn=list)
    full = list(loader)
    loaded.clear()
    rest = list(skip_batches(loader, 2))
    assert rest == full[2:]
    assert sorted(loaded) == sorted(i for batch in full[2:] for i in batch)
    assert skip_batches(loader, 0) is loader


def test_stop_signal_defers_the_first_signal_only():
    previous = signal.getsignal(signal.SIGTERM)
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == previous  # a second one takes the old way out
    assert signal.getsignal(signal.SIGTERM) == previous


def test_truncate_metrics_drops_records_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"type": "iter", "epoch": 0, "iteration": i} for i in range(6)]
    records.insert(3, {"type": "epoch", "epoch": 0, "iteration": 3})
    records.append({"type": "epoch", "epoch": 1, "iteration": 6})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    truncate_metrics(path, iteration=4, epoch=1)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["type"], r["iteration"]) for r in kept] == [
        ("iter", 0),
        ("iter", 1),
        ("iter", 2),
        ("epoch", 3),
        ("iter", 3),
    ]


@pytest.mark.parametrize("avx512_bf16, amx", [(False, False), (True, False), (False, True)])
def test_amp_precision_follows_the_device_and_the_cpus_bfloat16_instructions(monkeypatch, avx512_bf16, amx):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    native = avx512_bf16 or amx
    assert cpu_has_bfloat16() is native
    assert amp_precision(torch.device("cpu"), True) == ("bfloat16" if native else "float32")
    assert amp_precision(torch.device("cuda"), True) == "float16"
    assert (
        amp_precision(torch.device("cpu"), False) == amp_precision(torch.device("cuda"), False) == "float32"
    )


def test_amp_autocast_is_bfloat16_on_the_cpu_and_off_without_amp():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.rand(1, 3, 8, 8)
    with autocast(torch.device("cpu"), True):
        assert conv(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), False):
        assert conv(x).dtype == torch.float32
