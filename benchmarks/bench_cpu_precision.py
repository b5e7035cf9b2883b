"""One training step of the ``synthetic`` recipe's model in float32 and under bfloat16 autocast on this CPU.

``train --amp`` uses bfloat16 autocast only on a CPU with bfloat16 instructions (AVX-512-BF16 or AMX) and
float32 elsewhere. This measures why: the same step (forward with targets and backward, on the same
batch of 4 synthetic images at 160 px, with the same weights: no update) in both precisions, interleaved
round by round so that load from other processes hits both alike. It records the CPU's bfloat16
capability, what ``--amp`` resolves to here, the medians, and the per-round bf16 / fp32 ratios.

Example::

    python benchmarks/bench_cpu_precision.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _results import write_result
from fnoise_maskrcnn.arguments import parse
from fnoise_maskrcnn.data import CocoInstances, collate_fn
from fnoise_maskrcnn.data.shapes import default_dataset
from fnoise_maskrcnn.data.transforms import build_transforms
from fnoise_maskrcnn.engine.state import amp_precision, autocast, cpu_has_bfloat16
from fnoise_maskrcnn.models import build_model

CPU = torch.device("cpu")


def synthetic_step() -> tuple[torch.nn.Module, tuple, dict]:
    """The synthetic recipe's model (seed 0) in training mode, a batch of its first 4 training images, and
    the recipe's settings that shape the step."""
    config = parse([]).config
    splits = default_dataset()
    data = CocoInstances(splits.train_images, splits.train_ann, transforms=build_transforms(False))
    batch = collate_fn([data[i] for i in range(config.data.batch_size)])
    torch.manual_seed(0)
    model = build_model(config.model.build_config(len(data.categories) + 1)).train()
    settings = {
        "recipe": "synthetic",
        "model": config.model.model,
        "norm": config.model.norm,
        "size": [config.model.min_size, config.model.max_size],
        "batch_size": config.data.batch_size,
        "model_kwarg": config.model.model_kwarg,
    }
    return model, batch, settings


def step_seconds(model: torch.nn.Module, batch: tuple, bf16: bool) -> float:
    """Forward with targets and backward of the summed losses; the gradients are dropped."""
    images, targets = batch
    start = time.perf_counter()
    with autocast(CPU, bf16):
        loss = sum(model(list(images), list(targets)).values())
    loss.backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (each: one step per precision)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, batch, settings = synthetic_step()
    times: dict[str, list[float]] = {"float32": [], "bfloat16_autocast": []}
    for bf16 in (False, True):  # warm-up, not timed
        step_seconds(model, batch, bf16)
    for round_ in range(args.rounds):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        for bf16 in order:
            times["bfloat16_autocast" if bf16 else "float32"].append(step_seconds(model, batch, bf16))
    ratios = [b / f for b, f in zip(times["bfloat16_autocast"], times["float32"])]
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    result = {
        "command": f"python benchmarks/bench_cpu_precision.py --rounds {args.rounds}"
        + (f" --threads {args.threads}" if args.threads else ""),
        "settings": settings,
        "cpu_bfloat16": {
            "native": cpu_has_bfloat16(),
            "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
            "amx": torch.cpu._is_amx_tile_supported(),
            "capability": torch.backends.cpu.get_cpu_capability(),
        },
        "amp_resolves_to": amp_precision(CPU, True),
        "seconds": {name: [round(t, 3) for t in ts] for name, ts in times.items()},
        "median_s": {name: round(m, 3) for name, m in medians.items()},
        "bf16_over_fp32_per_round": [round(r, 2) for r in ratios],
        "bf16_over_fp32_median": round(statistics.median(ratios), 2),
    }
    print(write_result("cpu_precision", result))
    print(result["median_s"], result["bf16_over_fp32_per_round"])


if __name__ == "__main__":
    main()
