"""Training-step time of torchvision's Mask R-CNN vs ours without and with F-Noise; prints JSON.

Every variant runs the same training step (forward with targets, backward of the summed losses;
no optimizer update, so every round sees the same weights) on the same batch, with the same weights.
The variants are interleaved within each round, starting at a different variant each round, so load
from other processes affects all of them alike; medians over rounds and per-round paired ratios are
reported. Variants:

- ``stock``: ``torchvision.models.detection.maskrcnn_resnet50_fpn``;
- ``off``: ours with ``use_f_noise=False``;
- ``<mode>_all`` / ``elementwise_c5``: ours with F-Noise on every body level / on C5 only;
- ``naive_hook``: stock with a forward hook on ``backbone.body`` returning
  ``x + sigma * |x| * randn_like(x)`` for every level (the textbook form of elementwise F-Noise).

F-Noise alone also times ``textbook_<mode>``: the pooled modes written op by op for autograd, the form
``FNoise`` used before its fused backward.

A second measurement times F-Noise alone (forward + backward on the body's real feature maps for the
batch), which is far less noisy than the difference of two whole steps, and ``--profile`` breaks the
naive form and ours down by operator with ``torch.profiler``.

Example::

    python benchmarks/bench_fnoise.py --size 512 --batch-size 2 --repeats 5 --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import platform
import resource
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
import torchvision
from torch import Tensor, nn

from _results import write_result
from fnoise_maskrcnn import F_NOISE_MODES, FNoise, maskrcnn_resnet50_fpn
from fnoise_maskrcnn.engine.allocator import ALLOCATOR_CHOICES, keep_freed_memory
from fnoise_maskrcnn.study.stats import t975

SIGMA = 0.1
VARIANTS = ("stock", "off", *(f"{mode}_all" for mode in F_NOISE_MODES), "elementwise_c5", "naive_hook")


def naive_f_noise(features: dict[str, Tensor], sigma: float = SIGMA) -> dict[str, Tensor]:
    """The direct transcription of elementwise F-Noise: ``x + sigma * |x| * eps`` on every level."""
    return OrderedDict((name, x + sigma * x.abs() * torch.randn_like(x)) for name, x in features.items())


def textbook_pooled(mode: str, sigma: float = SIGMA) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """A pooled mode written op by op, ``x + sigma * m(x) * eps``, for autograd to differentiate: the form
    ``FNoise`` used before its fused backward (the reference for that saving)."""

    def magnitude(x: Tensor) -> Tensor:
        if mode == "channel":
            return x.abs().mean(dim=(2, 3), keepdim=True)
        if mode == "sample":
            return torch.linalg.vector_norm(x, dim=(1, 2, 3), keepdim=True) / x[0].numel() ** 0.5
        return x.abs().mean()

    def perturb(features: dict[str, Tensor]) -> dict[str, Tensor]:
        return OrderedDict(
            (name, torch.addcmul(x, magnitude(x), torch.randn_like(x), value=sigma))
            for name, x in features.items()
        )

    return perturb


def make_batch(size: int, batch_size: int, num_classes: int, device: torch.device):
    """``batch_size`` random ``size`` x ``size`` images with three rectangular instances each."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(batch_size):
        images.append(torch.rand(3, size, size, generator=g).to(device))
        corners = (torch.rand(3, 2, generator=g) * size * 0.6).round()
        extents = (torch.rand(3, 2, generator=g) * size * 0.35 + size * 0.05).round()
        boxes = torch.cat([corners, corners + extents], dim=1)
        masks = torch.zeros(3, size, size, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        labels = torch.randint(1, num_classes, (3,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return images, targets


def build_variants(size: int, num_classes: int, device: torch.device) -> dict[str, Callable[[], nn.Module]]:
    """One stock and one of our models with identical weights; each variant configures one before a step."""
    small = {"min_size": size, "max_size": size}  # the images are not resized: the network sees size x size
    torch.manual_seed(0)
    stock = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, **small
    ).to(device)
    ours = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes,
        use_f_noise=True,
        f_noise_std=SIGMA,
        **small,
    ).to(device)
    ours.load_state_dict(stock.state_dict())
    hooked = copy.deepcopy(stock)
    hooked.backbone.body.register_forward_hook(lambda module, inputs, output: naive_f_noise(output))

    def ours_with(std: float, mode: str = "elementwise", levels: Sequence[str] | None = None):
        def configure() -> nn.Module:
            f = ours.backbone.f_noise
            f.std, f.mode, f.levels = std, mode, None if levels is None else list(levels)
            return ours

        return configure

    variants: dict[str, Callable[[], nn.Module]] = {"stock": lambda: stock, "off": ours_with(0.0)}
    for mode in F_NOISE_MODES:
        variants[f"{mode}_all"] = ours_with(SIGMA, mode)
    variants["elementwise_c5"] = ours_with(SIGMA, "elementwise", ["3"])
    variants["naive_hook"] = lambda: hooked
    return variants


def paired_interval(paired: Sequence[float]) -> dict[str, float | list[float]]:
    """Geometric mean of per-round ratios with its 95 % t interval (on log ratios); needs 2+ rounds."""
    if len(paired) < 2:
        return {}
    logs = [math.log(r) for r in paired]
    mean, half = statistics.mean(logs), t975(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return {
        "geometric_mean_of_paired": round(math.exp(mean), 4),
        "ci95": [round(math.exp(mean - half), 4), round(math.exp(mean + half), 4)],
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model: nn.Module, images, targets) -> None:
    model.train()
    losses = model(images, targets)
    sum(losses.values()).backward()
    model.zero_grad(set_to_none=True)


def minor_faults() -> int:
    """Minor page faults of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_steps(
    variants, names: list[str], images, targets, rounds: int, warmup: int, device
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Step times (s) and minor page faults per variant, per timed round."""
    times: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, list[int]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            model = variants[name]()
            synchronize(device)
            faults_before, start = minor_faults(), time.perf_counter()
            train_step(model, images, targets)
            synchronize(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
                faults[name].append(minor_faults() - faults_before)
        if r >= warmup:  # progress on stderr, so that an interrupted run still leaves its rounds
            latest = {name: round(1e3 * t[-1], 1) for name, t in times.items()}
            print(json.dumps({"round": r - warmup, "step_ms": latest}), file=sys.stderr, flush=True)
    return times, faults


def body_features(model: nn.Module, images) -> dict[str, Tensor]:
    with torch.no_grad():
        image_list, _ = model.transform(images)
        return model.backbone.body(image_list.tensors)


def f_noise_alone(features: dict[str, Tensor]) -> dict[str, Callable[[], None]]:
    """Forward + backward of each perturbation on the real feature maps, with a gradient of ones."""
    leaves = OrderedDict((k, v.detach().clone().requires_grad_()) for k, v in features.items())
    grads = [torch.ones_like(v) for v in leaves.values()]

    def run(perturb: Callable[[dict[str, Tensor]], dict[str, Tensor]]) -> Callable[[], None]:
        def step() -> None:
            out = perturb(leaves)
            torch.autograd.backward(list(out.values()), grads)
            for v in leaves.values():
                v.grad = None

        return step

    jobs = {"naive_hook": run(naive_f_noise)}
    for mode in F_NOISE_MODES:
        jobs[f"{mode}_all"] = run(FNoise(SIGMA, mode).train())
    jobs["elementwise_c5"] = run(FNoise(SIGMA, "elementwise", ["3"]).train())
    for mode in ("channel", "sample", "tensor"):
        jobs[f"textbook_{mode}"] = run(textbook_pooled(mode))
    jobs["randn_only"] = lambda: [torch.randn_like(v) for v in leaves.values()]
    return jobs


def time_jobs(jobs: dict[str, Callable[[], None]], repeats: int, device) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in jobs}
    names = list(jobs)
    for r in range(repeats + 1):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            jobs[name]()
            synchronize(device)
            if r > 0:
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def profile_jobs(
    jobs: dict[str, Callable[[], None]], names: Sequence[str], steps: int, device
) -> dict[str, dict[str, float]]:
    """Self time per operator (ms per call of the job), forward and backward together."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    result = {}
    for name in names:
        jobs[name]()
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(steps):
                jobs[name]()
                synchronize(device)
        ops = {}
        for event in prof.key_averages():
            self_us = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
            if self_us > 0:
                ops[event.key] = round(self_us / 1e3 / steps, 2)
        result[name] = dict(sorted(ops.items(), key=lambda kv: -kv[1])[:12])
    return result


def step_ratios(step_times: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Each variant's step time over its reference's (``stock`` for ``off`` and ``naive_hook``, else
    ``off``): the median of the per-round ratios, the ratio of medians, and the paired interval."""
    medians = {name: statistics.median(t) for name, t in step_times.items()}
    ratios = {}
    for name in step_times:
        reference = "stock" if name in ("off", "naive_hook") else "off"
        if name == "stock" or reference not in step_times:
            continue
        paired = [a / b for a, b in zip(step_times[name], step_times[reference])]
        ratios[f"{name}/{reference}"] = {
            "median_of_paired": round(statistics.median(paired), 4),
            "of_medians": round(medians[name] / medians[reference], 4),
            **paired_interval(paired),
        }
    return ratios


def run_config(args: argparse.Namespace, device: torch.device, allocator: str, feature_elements: int) -> dict:
    """What was measured, and how."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "size": args.size,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "machine": platform.processor() or platform.machine(),
        "sigma": SIGMA,
        "cpu_allocator": allocator,
        "feature_elements": feature_elements,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of training steps (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--micro-repeats", type=int, default=20, help="rounds of the F-Noise-alone timing")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument(
        "--profile-steps", type=int, default=0, help="profile F-Noise alone over N calls (default 0: off)"
    )
    parser.add_argument("--num-classes", type=int, default=5)
    parser.add_argument(
        "--cpu-allocator",
        choices=ALLOCATOR_CHOICES,
        default="system",
        help="keep: glibc malloc keeps freed memory, as train does by default (default: system)",
    )
    args = parser.parse_args(argv)
    if args.size < 64 or args.batch_size < 1 or args.repeats < 1 or args.warmup < 0 or args.micro_repeats < 1:
        parser.error("--size must be >= 64; --batch-size, --repeats and --micro-repeats >= 1; --warmup >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    allocator = "keep" if args.cpu_allocator == "keep" and keep_freed_memory() else "system"

    images, targets = make_batch(args.size, args.batch_size, args.num_classes, device)
    variants = build_variants(args.size, args.num_classes, device)
    names = [name for name in VARIANTS if name in args.variants]
    features = body_features(variants["stock"](), images)

    jobs = f_noise_alone(features)
    alone_ms = time_jobs(jobs, args.micro_repeats, device)
    step_times, step_faults = time_steps(variants, names, images, targets, args.repeats, args.warmup, device)

    medians = {name: 1e3 * statistics.median(t) for name, t in step_times.items()}
    reference_ms = medians.get("off", medians.get("stock"))
    result = {
        "config": run_config(args, device, allocator, sum(v.numel() for v in features.values())),
        "step_ms_median": {k: round(v, 1) for k, v in medians.items()},
        "step_minor_page_faults_median": {k: int(statistics.median(v)) for k, v in step_faults.items()},
        "ratios": step_ratios(step_times),
        "f_noise_alone_ms": {k: round(v, 2) for k, v in alone_ms.items()},
        "f_noise_alone_over_step": (
            {k: round(v / reference_ms, 4) for k, v in alone_ms.items()} if reference_ms else None
        ),
        "step_ms_all": {k: [round(1e3 * t, 1) for t in v] for k, v in step_times.items()},
    }
    if args.profile_steps:
        profiled = ["naive_hook", "elementwise_all"]
        result["profile_self_ms"] = profile_jobs(jobs, profiled, args.profile_steps, device)
    print(json.dumps(result, indent=2))
    print(f"wrote {write_result('fnoise_step_time', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
