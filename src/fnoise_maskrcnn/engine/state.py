"""The training engine: one epoch of training, validation losses and COCO AP.

In the spirit of torchvision's ``references/detection/engine.py``: plain loops, no framework. What it
adds: a per-iteration learning-rate schedule (warmup included) that makes resuming exact, AMP through
``torch.amp``, non-finite loss detection, stopping cleanly on SIGINT/SIGTERM, the F-Noise
noise-to-signal ratio, and results gathered across ``torchrun`` processes.
"""

import contextlib
import datetime
import math
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Sampler

from . import distributed as dist_utils
from .coco_eval import evaluate_coco, predictions_to_coco_results
from .fnoise import FNoise
from .metrics_log import RunLogger

__all__ = [
    "LOSS_NAMES",
    "LrSchedule",
    "TrainState",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "StopSignal",
    "DataRng",
    "autocast",
    "skip_batches",
    "train_one_epoch",
    "evaluate_losses",
    "evaluate_ap",
]

#: The five losses of torchvision's Mask R-CNN in training mode, in logging order.
LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


class NonFiniteLossError(RuntimeError):
    """The loss of an iteration is NaN or infinite; ``losses`` holds the total and each component."""

    def __init__(self, iteration: int, epoch: int, losses: Mapping[str, float]) -> None:
        self.iteration = iteration
        self.epoch = epoch
        self.losses = dict(losses)
        parts = ", ".join(f"{k}={v:.4g}" for k, v in self.losses.items())
        super().__init__(f"non-finite loss at iteration {iteration} (epoch {epoch}): {parts}")


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; the iteration in progress was finished."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class StopSignal:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current iteration.

    A second signal aborts at once (the original handlers are back by then). Use as a context manager;
    handlers can only be installed from the main thread, elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self._restore()
        print(
            f"\n{signal.Signals(signum).name}: finishing the current iteration, then saving; "
            "send it again to abort without saving",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __exit__(self, *exc: Any) -> None:
        self._restore()


class LrSchedule:
    """Learning-rate factor as a function of the global iteration, for ``LambdaLR`` stepped every iteration.

    Linear warmup from ``warmup_factor`` to 1 over ``warmup_iters`` iterations, multiplied by the main
    schedule: ``"multistep"`` multiplies by ``gamma`` at each epoch in ``milestones`` (as torchvision's
    references), ``"cosine"`` decays to 0 over ``total_iters`` along a half cosine.

    It is a plain object with plain attributes, so ``LambdaLR.state_dict()`` stores it and a checkpoint
    holding it loads with ``weights_only=True``.
    """

    def __init__(
        self,
        kind: str,
        iters_per_epoch: int,
        total_iters: int,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
    ) -> None:
        if kind not in ("multistep", "cosine"):
            raise ValueError(f"lr schedule must be 'multistep' or 'cosine', got {kind!r}")
        self.kind = kind
        self.iters_per_epoch = int(iters_per_epoch)
        self.total_iters = int(total_iters)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, iteration: int) -> float:
        warmup = 1.0
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            warmup = self.warmup_factor * (1 - alpha) + alpha
        if self.kind == "multistep":
            epoch = iteration // max(self.iters_per_epoch, 1)
            main = self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        else:
            main = 0.5 * (1 + math.cos(math.pi * min(iteration, self.total_iters) / max(self.total_iters, 1)))
        return warmup * main


@dataclass
class TrainState:
    """Position in training: ``epoch`` (0-based) in progress, batches of it done, global iterations done.

    ``sums``/``count`` accumulate the epoch's training losses and F-Noise ratios, so that a run resumed
    in the middle of an epoch still reports that epoch's means over all its iterations.
    """

    epoch: int = 0
    epoch_iteration: int = 0
    iteration: int = 0
    loss_sums: dict[str, float] = field(default_factory=dict)
    loss_count: int = 0
    nsr_sums: dict[str, float] = field(default_factory=dict)
    nsr_count: int = 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epoch_iteration = 0
        self.loss_sums, self.loss_count = {}, 0
        self.nsr_sums, self.nsr_count = {}, 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "epoch_iteration": self.epoch_iteration,
            "iteration": self.iteration,
            "loss_sums": dict(self.loss_sums),
            "loss_count": self.loss_count,
            "nsr_sums": dict(self.nsr_sums),
            "nsr_count": self.nsr_count,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "TrainState":
        return cls(**{k: state[k] for k in cls.__dataclass_fields__ if k in state})

    def mean_losses(self) -> dict[str, float]:
        return {k: v / max(self.loss_count, 1) for k, v in self.loss_sums.items()}

    def mean_nsr(self) -> dict[str, float] | None:
        if not self.nsr_count:
            return None
        return {k: v / self.nsr_count for k, v in sorted(self.nsr_sums.items())}


class DataRng:
    """A torch CPU random stream reserved for data loading.

    With ``workers=0`` the random augmentations run in the training process and would draw from the
    global generator, interleaved with the model's own draws (RPN/ROI sampling). Fetching each batch
    inside :meth:`next` gives them their own stream instead, so the augmentations depend only on the
    seed and epoch: runs with and without F-Noise see the same flipped images, and a resumed run the
    same as an uninterrupted one. (With ``workers > 0`` the workers have their own seeds anyway.)
    """

    def __init__(self, seed: int) -> None:
        generator = torch.Generator()
        generator.manual_seed(seed)
        self.state: Tensor = generator.get_state()

    def next(self, iterator: Iterator[Any]) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.state)
            batch = next(iterator)
            self.state = torch.get_rng_state()
        return batch


class _SkipBatches(Sampler[list[int]]):
    def __init__(self, batch_sampler: Sampler[list[int]], skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.sampler = getattr(batch_sampler, "sampler", None)
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.batch_sampler):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)


def skip_batches(loader: DataLoader, skip: int) -> DataLoader:
    """The same loader without its first ``skip`` batches of the current epoch; nothing is loaded for them."""
    if skip <= 0:
        return loader
    return DataLoader(
        loader.dataset,
        batch_sampler=_SkipBatches(loader.batch_sampler, skip),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=loader.generator,
    )


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``--amp``: float16 on CUDA (with a ``GradScaler``), bfloat16 elsewhere."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def _peak_memory_mb(device: torch.device) -> tuple[str, float]:
    """``("max mem", MiB allocated by tensors)`` on CUDA, ``("max rss", MiB resident)`` on the CPU."""
    if device.type == "cuda":
        return "max mem", torch.cuda.max_memory_allocated(device) / 2**20
    return "max rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _f_noise_of(model: nn.Module) -> FNoise | None:
    f_noise = getattr(_unwrap(model).backbone, "f_noise", None)
    return f_noise if isinstance(f_noise, FNoise) and f_noise.std > 0 else None


def _sigma_in_force(f_noise: FNoise | None) -> float | dict[str, float] | None:
    """F-Noise's sigma this iteration: a number, or ``{level: sigma}`` with per-level sigmas; None without
    F-Noise."""
    if f_noise is None:
        return None
    if f_noise.level_std:
        return {level: f_noise.std_for(level) for level in f_noise.level_std}
    return f_noise.std * f_noise.scale


def _sigma_scalars(sigma: float | dict[str, float] | None) -> dict[str, float]:
    if sigma is None:
        return {}
    if isinstance(sigma, dict):
        return {f"f_noise_std/{level}": value for level, value in sigma.items()}
    return {"f_noise_std": sigma}


def _noise_to_signal(f_noise: FNoise) -> dict[str, float]:
    """``||perturbation|| / ||input||`` per recorded level (over the whole batch)."""
    ratios = {}
    for name, x in f_noise.recorded_inputs.items():
        perturbation = f_noise.recorded_perturbations[name]
        norm = torch.linalg.vector_norm(x.float())
        ratios[name] = float(torch.linalg.vector_norm(perturbation.float()) / norm.clamp_min(1e-12))
    return ratios


def _to_device(images: Sequence[Tensor], targets: Sequence[Mapping[str, Any]], device: torch.device):
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [
        {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in t.items()}
        for t in targets
    ]
    return images, targets


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    data_loader: DataLoader,
    data_rng: DataRng,
    state: TrainState,
    device: torch.device,
    *,
    iters_in_epoch: int,
    logger: RunLogger,
    stop: StopSignal,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    clip_grad: float = 0.0,
    print_freq: int = 20,
    on_iteration: Callable[[int, Sequence[Tensor]], None] | None = None,
    f_noise_schedule: Callable[[int], float] | None = None,
) -> None:
    """Trains over ``data_loader`` (the rest of epoch ``state.epoch``), updating ``state`` in place.

    Each iteration: forward in training mode (under ``autocast`` with ``amp``), the five losses
    averaged over processes, a finite-loss check *before* the update, backward (through ``scaler`` if
    given), optional gradient-norm clipping at ``clip_grad``, optimizer and scheduler steps.

    Every ``print_freq`` iterations it prints a progress line (ETA, iteration and data time, peak
    memory) and appends an ``"iter"`` record to metrics.jsonl; TensorBoard gets every iteration. On
    those iterations it also records F-Noise's noise-to-signal ratio per level.

    Args:
        data_rng: the data-loading random stream (see :class:`DataRng`).
        iters_in_epoch: the epoch's full number of batches (for the ETA and progress display).
        on_iteration: called as ``on_iteration(global_iteration, images)`` after each update (pictures).
        f_noise_schedule: multiplier of F-Noise's sigma as a function of the global iteration, set before
            each forward pass; the sigma in force is logged as ``f_noise_std``.

    Raises:
        NonFiniteLossError: the loss of an iteration is not finite; that iteration made no update, so
            the model and optimizer still hold the last good state.
        TrainingInterrupted: a stop signal arrived on any process; the iteration was completed.
    """
    model.train()
    f_noise = _f_noise_of(model)
    world_size = dist_utils.get_world_size()
    iterator = iter(data_loader)
    start = end = time.perf_counter()
    done_at_start = state.epoch_iteration
    while True:
        try:
            images, targets = data_rng.next(iterator)
        except StopIteration:
            break
        images, targets = _to_device(images, targets, device)
        data_time = time.perf_counter() - end
        logged = state.epoch_iteration % print_freq == 0 or state.epoch_iteration == iters_in_epoch - 1
        if f_noise is not None and logged:
            f_noise.record = True

        if f_noise is not None and f_noise_schedule is not None:
            f_noise.scale = f_noise_schedule(state.iteration)
        with autocast(device, amp):
            loss_dict = model(images, targets)
        losses = sum(loss_dict.values())

        local = dict(
            zip(LOSS_NAMES, torch.stack([loss_dict[k].detach().float() for k in LOSS_NAMES]).tolist())
        )
        local["loss"] = float(losses.detach())
        local["stop"] = float(stop.signum is not None)
        reduced = dist_utils.all_reduce_sum(local, device)
        stop_requested = reduced.pop("stop") > 0
        values = {k: v / world_size for k, v in reduced.items()}
        values = {"loss": values["loss"], **{k: values[k] for k in LOSS_NAMES}}
        if not all(math.isfinite(v) for v in values.values()):
            if f_noise is not None:
                f_noise.record = False
                f_noise.clear_records()
            raise NonFiniteLossError(state.iteration, state.epoch, values)

        nsr: dict[str, float] = {}
        if f_noise is not None and f_noise.record:
            nsr = _noise_to_signal(f_noise)
            f_noise.record = False
            f_noise.clear_records()

        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(losses).backward()
            if clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            losses.backward()
            if clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        lr_scheduler.step()

        if nsr:
            nsr = dist_utils.all_reduce_sum(nsr, device)
            for name, value in nsr.items():
                state.nsr_sums[name] = state.nsr_sums.get(name, 0.0) + value / world_size
            state.nsr_count += 1
        for name, value in values.items():
            state.loss_sums[name] = state.loss_sums.get(name, 0.0) + value
        state.loss_count += 1

        iteration_time = time.perf_counter() - end
        sigma = _sigma_in_force(f_noise)
        logger.scalars({**values, "lr": lr, **_sigma_scalars(sigma)}, state.iteration, prefix="train/")
        if logged:
            record = {"epoch": state.epoch, "iteration": state.iteration, "lr": lr, **values}
            if sigma is not None:
                record["f_noise_std"] = sigma
            record.update(time=iteration_time, data_time=data_time)
            logger.iteration(record)
            if dist_utils.is_main_process():
                done = state.epoch_iteration + 1
                elapsed = time.perf_counter() - start
                eta = elapsed / (done - done_at_start) * (iters_in_epoch - done)
                memory_name, memory = _peak_memory_mb(device)
                losses_text = "  ".join(f"{k}: {v:.4f}" for k, v in values.items())
                width = len(str(iters_in_epoch))
                print(
                    f"Epoch: [{state.epoch}]  [{done:>{width}}/{iters_in_epoch}]  eta: {_format_eta(eta)}  "
                    f"lr: {lr:.6f}  {losses_text}  time: {iteration_time:.4f}  data: {data_time:.4f}  "
                    f"{memory_name}: {memory:.0f} MB",
                    flush=True,
                )
        state.iteration += 1
        state.epoch_iteration += 1
        if on_iteration is not None:
            on_iteration(state.iteration - 1, images)
        end = time.perf_counter()
        if stop_requested:
            raise TrainingInterrupted(stop.signum or signal.SIGTERM)

    if dist_utils.is_main_process() and state.epoch_iteration > done_at_start:
        total = time.perf_counter() - start
        n = state.epoch_iteration - done_at_start
        print(f"Epoch: [{state.epoch}] Total time: {_format_eta(total)} ({total / n:.4f} s / it)", flush=True)


@contextlib.contextmanager
def _validation_loss_mode(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Training-mode forward (so the model returns losses) without side effects on training.

    BatchNorm layers use their running statistics and do not update them, F-Noise is off, and the
    RPN/ROI samplers draw from a fixed-seed stream that leaves the training stream untouched.
    """
    was_training = model.training
    model.train()
    for module in model.modules():
        if isinstance(module, (_BatchNorm, FNoise)):
            module.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            yield
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_losses(
    model: nn.Module, data_loader: DataLoader, device: torch.device, amp: bool = False
) -> dict[str, float]:
    """Mean validation losses (total and the five components), averaged over all processes' images.

    Uses the unwrapped model (no DDP); see :func:`_validation_loss_mode` for what is switched off.
    """
    model = _unwrap(model)
    sums: dict[str, float] = {k: 0.0 for k in ("loss", *LOSS_NAMES)}
    batches = 0
    with _validation_loss_mode(model, device):
        for images, targets in data_loader:
            images, targets = _to_device(images, targets, device)
            with autocast(device, amp):
                loss_dict = model(images, targets)
            for name in LOSS_NAMES:
                sums[name] += float(loss_dict[name])
            sums["loss"] += float(sum(loss_dict.values()))
            batches += 1
    sums["batches"] = float(batches)
    totals = dist_utils.all_reduce_sum(sums, device)
    count = max(totals.pop("batches"), 1.0)
    return {k: v / count for k, v in totals.items()}


@torch.no_grad()
def evaluate_ap(
    model: nn.Module,
    data_loader: DataLoader,
    device: torch.device,
    categories: Sequence[Mapping[str, Any]],
    coco_gt: Any,
    amp: bool = False,
) -> dict[str, Any] | None:
    """COCO bbox and segm AP of the model on ``data_loader``'s images, gathered across processes.

    Returns :func:`fnoise_maskrcnn.coco_eval.evaluate_coco`'s dict, plus ``num_images`` (images
    predicted), on rank 0 and None elsewhere.
    Images a ``DistributedSampler`` repeated to even out the shards are counted once.
    """
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    per_image: dict[int, list[dict[str, Any]]] = {}
    try:
        for images, targets in data_loader:
            images = [image.to(device, non_blocking=True) for image in images]
            with autocast(device, amp):
                outputs = model(images)
            outputs = [{k: v.float() if v.is_floating_point() else v for k, v in o.items()} for o in outputs]
            for output, target in zip(outputs, targets):
                image_id = int(target["image_id"])
                per_image[image_id] = predictions_to_coco_results([output], [image_id], categories)
    finally:
        model.train(was_training)
    gathered = dist_utils.all_gather_objects(per_image)
    if not dist_utils.is_main_process():
        return None
    merged: dict[int, list[dict[str, Any]]] = {}
    for part in gathered:
        merged.update(part)
    results = [entry for image_id in sorted(merged) for entry in merged[image_id]]
    metrics = evaluate_coco(coco_gt, results, cat_ids=[int(c["id"]) for c in categories])
    metrics["num_images"] = len(merged)
    return metrics
