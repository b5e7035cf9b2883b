"""Training state and the small pieces the loop is made of: position and running sums, the lr schedule,
the data random stream, resuming mid-epoch, stop signals, autocast, and errors.

In the spirit of torchvision's ``references/detection``: plain objects, no framework. The state is what a
checkpoint holds, so resuming is exact.
"""

import contextlib
import datetime
import math
import resource
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from ..distributed import unwrap
from ..precision import detection_autocast

__all__ = [
    "LOSS_NAMES",
    "LrSchedule",
    "TrainState",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "StopSignal",
    "DataRng",
    "amp_dtype",
    "amp_precision",
    "autocast",
    "cpu_has_bfloat16",
    "skip_batches",
    "to_device",
    "unwrap",
    "peak_memory_mb",
    "format_eta",
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

    def add_losses(self, values: Mapping[str, float]) -> None:
        """Adds one iteration's (process-averaged) losses to the epoch's sums."""
        for name, value in values.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + value
        self.loss_count += 1

    def add_nsr(self, ratios: Mapping[str, float]) -> None:
        """Adds one logged iteration's F-Noise noise-to-signal ratios to the epoch's sums."""
        for name, value in ratios.items():
            self.nsr_sums[name] = self.nsr_sums.get(name, 0.0) + value
        self.nsr_count += 1

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


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512-BF16 or AMX). Without it oneDNN emulates
    bfloat16, and a Mask R-CNN training step under bf16 autocast is an order of magnitude slower than in
    float32 (docs/benchmarks.md)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype ``--amp`` resolves to on ``device``: ``torch.float16`` on CUDA, ``torch.bfloat16``
    on other devices, except a CPU without bfloat16 instructions (see :func:`cpu_has_bfloat16`), which
    runs in float32 (``None``: no autocast); ``None`` without ``amp``."""
    if not amp or (device.type == "cpu" and not cpu_has_bfloat16()):
        return None
    return _autocast_dtype(device)


def amp_precision(device: torch.device, amp: bool) -> str:
    """:func:`amp_dtype` by name: ``"float16"``, ``"bfloat16"`` or ``"float32"``."""
    dtype = amp_dtype(device, amp)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def _autocast_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def autocast(
    device: torch.device, enabled: bool, model: nn.Module | None = None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``--amp``: float16 on CUDA (with a ``GradScaler``), bfloat16 elsewhere; with
    ``model``, :func:`fnoise_maskrcnn.precision.detection_autocast` (box geometry kept in float32)."""
    if model is not None:
        return detection_autocast(model, device.type, _autocast_dtype(device) if enabled else None)
    return torch.autocast(device.type, dtype=_autocast_dtype(device), enabled=enabled)


def peak_memory_mb(device: torch.device) -> tuple[str, float]:
    """``("max mem", MiB allocated by tensors)`` on CUDA, ``("max rss", MiB resident)`` on the CPU."""
    if device.type == "cuda":
        return "max mem", torch.cuda.max_memory_allocated(device) / 2**20
    return "max rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def to_device(
    images: Sequence[Tensor], targets: Sequence[Mapping[str, Any]], device: torch.device
) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """Images ``[3, H, W]`` and their target dicts on ``device``."""
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [
        {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in t.items()}
        for t in targets
    ]
    return images, targets


def format_losses(values: Mapping[str, float]) -> str:
    """``"loss: 1.2345  loss_classifier: 0.4567 ..."``: a dict of losses (or ratios) on one console line."""
    return "  ".join(f"{k}: {v:.4f}" for k, v in values.items())


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))
