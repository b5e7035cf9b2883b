"""A training run: everything built from the configuration (data, model, optimizer, state), and its
checkpoints.

Built once by :meth:`Run.create` from a frozen :class:`~fnoise_maskrcnn.config.TrainConfig`; the loop
(:mod:`~fnoise_maskrcnn.engine.loop`) and the hooks read it. Seeds: the model's initial weights depend
on the seed only (the same with and without F-Noise); the noise, the training draws (RPN/ROI sampling)
and the data augmentation have their own streams derived from the seed.
"""

from __future__ import annotations

import copy
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .. import distributed as dist_utils
from ..config import TrainConfig
from ..data import CocoInstances, build_dataloader, build_transforms
from ..data.annotations import training_warnings
from ..fnoise import FNoise, FNoiseSchedule
from ..io.checkpoint import CheckpointError, make_checkpoint, save_checkpoint
from ..io.run_lock import RunLock, RunLockedError, remove_stale_temporaries
from ..metrics_log import RunLogger
from ..models import build_model
from .evaluation import evaluate_ap, evaluate_losses
from .state import DataRng, LrSchedule, StopSignal, TrainingInterrupted, TrainState, amp_precision

__all__ = [
    "Run",
    "DataSpec",
    "UserError",
    "resolve_data",
    "derive_seed",
    "lock_output_dir",
    "set_deterministic",
]

# Independent random streams derived from the seed.
_STREAM_TRAIN, _STREAM_F_NOISE, _STREAM_DATA = 1, 2, 3


class UserError(Exception):
    """A problem with the user's input; the command prints it as one ``error:`` line and exits with 2."""


@dataclass(frozen=True)
class DataSpec:
    """Where the images and annotations are (after resolving ``--data-path`` or the synthetic default)."""

    train_ann: Path
    train_images: Path
    val_ann: Path | None
    val_images: Path | None
    synthetic: bool


def resolve_data(config: TrainConfig) -> DataSpec:
    """``--data-path`` (COCO or simple layout), ``--train-ann`` and co., or the synthetic default."""
    data = config.data
    if data.train_ann:
        val = Path(data.val_ann) if data.val_ann else None
        val_images = Path(data.val_images or data.train_images) if val else None
        return DataSpec(Path(data.train_ann), Path(data.train_images), val, val_images, False)
    if data.data_path:
        root = Path(data.data_path)
        coco_train = root / "annotations" / "instances_train2017.json"
        if coco_train.is_file():
            coco_val = root / "annotations" / "instances_val2017.json"
            has_val = coco_val.is_file()
            val_images = root / "val2017" if has_val else None
            return DataSpec(coco_train, root / "train2017", coco_val if has_val else None, val_images, False)
        if (root / "train.json").is_file():
            has_val = (root / "val.json").is_file()
            images = root / "images"
            return DataSpec(
                root / "train.json",
                images,
                root / "val.json" if has_val else None,
                images if has_val else None,
                False,
            )
        raise UserError(
            f"--data-path {root}: found neither annotations/instances_train2017.json (COCO layout) "
            "nor train.json (simple layout)"
        )
    from ..data import shapes

    splits = shapes.default_dataset(num_images=data.synthetic_images)
    return DataSpec(splits.train_ann, splits.train_images, splits.val_ann, splits.val_images, True)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on all ``keys`` (e.g. ``(seed, stream, rank, epoch)``)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _datasets(config: TrainConfig, spec: DataSpec) -> tuple[CocoInstances, CocoInstances | None]:
    data = config.data
    categories = list(data.categories) if data.categories else None
    train_set = CocoInstances(
        spec.train_images,
        spec.train_ann,
        build_transforms(True, scale_jitter=data.scale_jitter, photometric=data.photometric),
        categories=categories,
        max_images=data.max_images,
    )
    for line in training_warnings(
        spec.train_ann, train_set.categories, train_set.instance_counts, categories
    ):
        print(f"warning: {line}", file=sys.stderr, flush=True)
    if spec.val_ann is None:
        return train_set, None
    val_set = CocoInstances(
        spec.val_images,
        spec.val_ann,
        build_transforms(False),
        categories=categories,
        max_images=data.max_val_images,
    )
    if val_set.categories != train_set.categories:
        raise UserError(
            f"{spec.val_ann}: categories differ from those of {spec.train_ann}; "
            "select common ones with --categories"
        )
    return train_set, val_set


def _loaders(
    config: TrainConfig,
    ctx: dist_utils.DistributedContext,
    train_set: CocoInstances,
    val_set: CocoInstances | None,
) -> tuple[DataLoader, DataLoader | None, DataLoader | None]:
    """The training and validation loaders, and the clean-training-loss loader: the first
    ``train_loss_images`` training images in id order with the validation transforms (None when 0)."""
    data, seed = config.data, config.run.seed
    common = {
        "batch_size": data.batch_size,
        "workers": data.workers,
        "distributed": ctx.distributed,
        "seed": seed,
    }
    train_loader = build_dataloader(
        train_set, train=True, aspect_ratio_group_factor=data.aspect_ratio_group_factor, **common
    )
    val_loader = build_dataloader(val_set, train=False, **common) if val_set is not None else None
    count = min(data.train_loss_images, len(train_set))
    train_loss_loader = None
    if count:
        clean = copy.copy(train_set)  # shares the annotations; only the transforms differ
        clean.transforms = build_transforms(False)
        train_loss_loader = build_dataloader(Subset(clean, range(count)), train=False, **common)
    return train_loader, val_loader, train_loss_loader


def _model(config: TrainConfig, num_classes: int, resumed: dict[str, Any] | None) -> nn.Module:
    """The model (seeded by the caller); from the checkpoint's ``model_config`` when resuming."""
    try:
        if resumed is not None:  # no weights to load (or download): the checkpoint's replace them
            return build_model(resumed["model_config"])
        spec = config.model
        return build_model(
            spec.build_config(num_classes), weights=spec.weights, weights_backbone=spec.weights_backbone
        )
    except CheckpointError:
        raise
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as exc:
        raise UserError(str(exc).splitlines()[0]) from exc


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    optim = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if optim.opt == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)


class Run:
    """One training run. Build it with :meth:`create`."""

    logger: RunLogger
    stop: StopSignal | None = None

    @classmethod
    def create(
        cls, config: TrainConfig, ctx: dist_utils.DistributedContext, resumed: dict[str, Any] | None = None
    ) -> Run:
        """Builds data, model, optimizer and schedules; ``resumed``: the checkpoint to continue, if any."""
        run = cls()
        run.config, run.ctx, run.device = config, ctx, ctx.device
        run.output_dir = Path(config.run.output_dir)
        run.data = resolve_data(config)
        run.train_set, run.val_set = _datasets(config, run.data)
        run.categories = run.train_set.categories
        run.train_loader, run.val_loader, run.train_loss_loader = _loaders(
            config, ctx, run.train_set, run.val_set
        )
        run.iters_per_epoch = len(run.train_loader)
        seed = config.run.seed
        # Same seed -> same initial weights, with or without F-Noise; the noise has its own generator.
        torch.manual_seed(seed)
        random.seed(seed)
        run.model = _model(config, len(run.categories) + 1, resumed).to(run.device)
        run.model_config = run.model.build_config
        run._init_f_noise()
        torch.manual_seed(derive_seed(seed, _STREAM_TRAIN, ctx.rank))
        random.seed(derive_seed(seed, _STREAM_TRAIN, ctx.rank))
        run._init_optimisation()
        run.state = TrainState()
        run.data_rng = DataRng(run.data_seed(0))
        run.best_metric, run.best_epoch = None, None
        run.ddp_model = run.model
        if ctx.distributed:
            if run.model_config.get("norm") == "syncbn":
                run.model = nn.SyncBatchNorm.convert_sync_batchnorm(run.model)
            device_ids = [run.device.index] if run.device.type == "cuda" else None
            run.ddp_model = nn.parallel.DistributedDataParallel(run.model, device_ids=device_ids)
        if resumed is not None:
            run.resume(resumed)
        return run

    def _init_f_noise(self) -> None:
        f_noise = self.config.model.f_noise
        #: The model's F-Noise module when it perturbs anything (the hooks act on it), else None.
        self.f_noise: FNoise | None = self.model.backbone.f_noise if f_noise.active else None
        self.f_noise_generator: torch.Generator | None = None
        self.f_noise_schedule: FNoiseSchedule | None = None
        if f_noise.enabled:
            self.f_noise_generator = torch.Generator(device=self.device)
            self.f_noise_generator.manual_seed(
                derive_seed(self.config.run.seed, _STREAM_F_NOISE, self.ctx.rank)
            )
            self.model.backbone.f_noise.generator = self.f_noise_generator
            self.f_noise_schedule = f_noise.sigma_schedule(self.iters_per_epoch, self.config.optim.epochs)

    def _init_optimisation(self) -> None:
        optim = self.config.optim
        self.optimizer = _optimizer(self.config, self.model)
        self.schedule = LrSchedule(
            optim.lr_scheduler,
            self.iters_per_epoch,
            self.iters_per_epoch * optim.epochs,
            milestones=optim.lr_steps,
            gamma=optim.lr_gamma,
            warmup_iters=optim.warmup_iters,
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        # what --amp resolved to here: "float16", "bfloat16" or "float32" (state.amp_precision)
        self.precision = amp_precision(self.device, optim.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "float16" else None

    @property
    def amp(self) -> bool:
        """Whether training and evaluation run under autocast (``--amp``, where it pays off)."""
        return self.precision != "float32"

    @property
    def clip_grad(self) -> float:
        return self.config.optim.clip_grad

    def data_seed(self, epoch: int) -> int:
        """The seed of the data-loading stream of ``epoch`` on this process."""
        return derive_seed(self.config.run.seed, _STREAM_DATA, self.ctx.rank, epoch)

    def resume(self, checkpoint: dict[str, Any]) -> None:
        """Loads a training checkpoint's state: weights, optimizer, schedule, scaler, RNGs, position."""
        if checkpoint["categories"] != self.categories:
            raise UserError(f"{self.output_dir / 'last.pth'}: its categories differ from those of the data")
        self._check_precision(checkpoint.get("precision"))
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        # The position comes from the checkpoint, the schedule from the configuration (a longer --epochs).
        schedule = dict(vars(self.schedule))
        self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        vars(self.schedule).update(schedule)
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.state = TrainState.from_state_dict(checkpoint["train_state"])
        self.best_metric = checkpoint.get("best_metric")
        self.best_epoch = checkpoint.get("best_epoch")
        self.data_rng = DataRng(self.data_seed(self.state.epoch))
        rng = checkpoint["rng"]
        _restore_rng(
            rng[self.ctx.rank] if self.ctx.rank < len(rng) else rng[0], self.f_noise_generator, self.data_rng
        )

    def _check_precision(self, trained: str | None) -> None:
        """A run keeps one precision: resuming a checkpoint trained in another one than ``--amp`` resolves
        to here (a bfloat16 run on a CPU without bfloat16 instructions, a float32 one under ``--amp`` on a
        CPU with them) is refused. Checkpoints that predate the ``precision`` key are not checked."""
        if trained is None or trained == self.precision:
            return
        if trained == "float32":
            how = "resume it with --no-amp"
        elif trained == "bfloat16":
            how = "resume it on a CPU with bfloat16 instructions (AVX-512-BF16 or AMX)"
        else:
            how = f"resume it where --amp gives {trained} (a CUDA device)"
        raise UserError(
            f"{self.output_dir / 'last.pth'}: trained in {trained}, but this machine would continue it in "
            f"{self.precision}; a run keeps one precision: {how}"
        )

    def checkpoint(self, pending_record: dict[str, Any] | None = None) -> dict[str, Any]:
        """The training checkpoint (the package's format plus optimizer, scheduler, scaler, RNGs, position,
        and the configuration). Collective under DDP: every process contributes its RNG states."""
        rng = dist_utils.all_gather_objects(_rng_state(self.f_noise_generator, self.data_rng))
        return {
            **self.model_checkpoint(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "train_state": self.state.state_dict(),
            "rng": [{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in r.items()} for r in rng],
            "pending_epoch_record": pending_record,
            "precision": self.precision,
        }

    def model_checkpoint(self) -> dict[str, Any]:
        """The model's checkpoint alone (``best.pth``): weights, how to rebuild them, categories, config."""
        return make_checkpoint(
            self.model.state_dict(),
            self.model_config,
            self.categories,
            config=self.config.to_dict(),
            epoch=self.state.epoch,
            iteration=self.state.iteration,
            best_metric=self.best_metric,
            best_epoch=self.best_epoch,
        )

    def save(self, best: bool = False, pending_record: dict[str, Any] | None = None) -> None:
        """Writes ``last.pth`` (and the model alone to ``best.pth`` with ``best``), atomically."""
        checkpoint = self.checkpoint(pending_record)
        if self.ctx.is_main:
            save_checkpoint(checkpoint, self.output_dir / "last.pth")
            if best:
                save_checkpoint(self.model_checkpoint(), self.output_dir / "best.pth")
        dist_utils.barrier()

    def check_stop(self) -> None:
        """Raises :class:`TrainingInterrupted` if a stop signal has arrived (checked between validation
        batches)."""
        if self.stop is not None and self.stop.signum is not None:
            raise TrainingInterrupted(self.stop.signum)

    def evaluate(self) -> dict[str, Any]:
        """Validation losses and COCO AP (None on ranks other than 0), and with ``--train-loss-images``
        the clean training losses (``"train_clean"``: measured as the validation losses are, F-Noise off;
        else None)."""
        assert self.val_loader is not None and self.val_set is not None
        amp = self.amp
        val = evaluate_losses(self.ddp_model, self.val_loader, self.device, amp, self.check_stop)
        train_clean = None
        if self.train_loss_loader is not None:
            train_clean = evaluate_losses(
                self.ddp_model, self.train_loss_loader, self.device, amp, self.check_stop
            )
        metrics = evaluate_ap(
            self.model, self.val_loader, self.device, self.categories, self.val_set.coco, amp, self.check_stop
        )
        return {"val": val, "train_clean": train_clean, "metrics": metrics}


def set_deterministic(enabled: bool) -> None:
    """``--deterministic``: deterministic algorithms (warning where there are none), no cuDNN autotuning."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False


def lock_output_dir(output_dir: Path) -> RunLock:
    """Creates ``output_dir``, takes its lock (one training per directory) and removes stale temporaries."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(output_dir).acquire()
    except RunLockedError as exc:
        raise UserError(f"--output-dir {exc}") from None
    except OSError as exc:
        raise UserError(
            f"--output-dir {output_dir}: cannot be used as a run directory ({exc.strerror or exc})"
        ) from None
    for path in remove_stale_temporaries(output_dir):
        print(f"removed {path}, left by an interrupted write", flush=True)
    return lock


def _rng_state(f_noise_generator: torch.Generator | None, data_rng: DataRng | None) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if f_noise_generator is not None:
        state["f_noise"] = f_noise_generator.get_state()
    if data_rng is not None:
        state["data"] = data_rng.state
    return state


def _restore_rng(state: dict[str, Any], f_noise_generator: torch.Generator | None, data_rng: DataRng) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if f_noise_generator is not None and "f_noise" in state:
        f_noise_generator.set_state(state["f_noise"])
    if "data" in state:
        data_rng.state = state["data"]
