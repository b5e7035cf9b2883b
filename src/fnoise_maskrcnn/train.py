"""Train Mask R-CNN with or without F-Noise: ``python -m fnoise_maskrcnn.train``.

Without data flags it trains on the built-in synthetic dataset, so the command runs anywhere::

    python -m fnoise_maskrcnn.train --f-noise --epochs 1 --output-dir runs/quickstart

On COCO, or any COCO-format dataset::

    python -m fnoise_maskrcnn.train --data-path /data/coco --f-noise --epochs 26 --lr-steps 16 22
    python -m fnoise_maskrcnn.train --train-ann train.json --train-images imgs/ --val-ann val.json ...

Several processes (DDP; NCCL on GPUs, gloo on the CPU)::

    torchrun --nproc_per_node=N -m fnoise_maskrcnn.train ...

The output directory receives ``config.json``, ``metrics.jsonl``, TensorBoard events, ``last.pth``
(every epoch) and ``best.pth`` (best segm AP). ``--resume`` continues the run in ``--output-dir``.
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed as dist_utils
from .atomic import write_text_atomic
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from .coco_eval import format_metrics_table
from .data import CocoInstances, DatasetError, build_dataloader, build_transforms, set_epoch
from .engine import (
    LOSS_NAMES,
    DataRng,
    LrSchedule,
    NonFiniteLossError,
    StopSignal,
    TrainingInterrupted,
    TrainState,
    evaluate_ap,
    evaluate_losses,
    skip_batches,
    train_one_epoch,
)
from .fnoise import F_NOISE_DISTRIBUTIONS, F_NOISE_MODES, F_NOISE_PRESETS, F_NOISE_SCHEDULES, FNoiseSchedule
from .metrics_log import RunLogger, truncate_metrics
from .models import ARCHITECTURES, NORMS, build_model
from .recipes import RECIPE_HELP, RECIPES, recipe_defaults
from .run_lock import RunLock, RunLockedError, remove_stale_temporaries

__all__ = ["build_parser", "main"]

COCO_MIN_SIZE, COCO_MAX_SIZE = 800, 1333
#: torchvision's reference learning rate: 0.02 for 16 images per step (8 GPUs x 2), scaled linearly.
REFERENCE_LR, REFERENCE_BATCH = 0.02, 16
#: Flags that define the model, data or randomness of a run: a resumed run must keep them.
FIXED_ON_RESUME = (
    "data_path",
    "train_ann",
    "train_images",
    "val_ann",
    "val_images",
    "categories",
    "max_images",
    "max_val_images",
    "synthetic_images",
    "model",
    "weights",
    "weights_backbone",
    "norm",
    "anchor_sizes",
    "trainable_backbone_layers",
    "min_size",
    "max_size",
    "f_noise",
    "f_noise_std",
    "f_noise_mode",
    "f_noise_dist",
    "f_noise_levels",
    "f_noise_schedule",
    "f_noise_std_end",
    "f_noise_step_epochs",
    "f_noise_warmup_iters",
    "batch_size",
    "opt",
    "seed",
    "lr_scheduler",
    "lr_steps",
    "warmup_iters",
    "scale_jitter",
    "photometric",
    "aspect_ratio_group_factor",
    "model_kwarg",
)
# Independent random streams derived from --seed.
_STREAM_TRAIN, _STREAM_F_NOISE, _STREAM_DATA = 1, 2, 3


class UserError(Exception):
    """A problem with the user's input; main() prints it as one ``error:`` line and exits with 2."""


def _model_kwarg(text: str) -> list[Any]:
    """``"KEY=VALUE"`` -> ``[KEY, VALUE]`` with VALUE parsed as JSON when it is JSON (a list: JSON-able)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with KEY a MaskRCNN argument name, got {text!r}"
        )
    try:
        return [key, json.loads(value)]
    except json.JSONDecodeError:
        return [key, value]


def parse_f_noise_std(values: Sequence[str]) -> float | dict[str, float]:
    """``["0.1"]`` -> 0.1; ``["0=0.05", "3=0.2"]`` -> ``{"0": 0.05, "3": 0.2}``; raises ValueError."""
    if len(values) == 1 and "=" not in values[0]:
        sigma = float(values[0])
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"must be a finite number >= 0, got {values[0]}")
        return sigma
    per_level: dict[str, float] = {}
    for item in values:
        level, sep, text = item.partition("=")
        if not sep or not level:
            raise ValueError(f"expected SIGMA or LEVEL=SIGMA ..., got {' '.join(values)}")
        sigma = float(text)
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"level {level} must be a finite number >= 0, got {text}")
        per_level[level] = sigma
    return per_level


class _StdAction(argparse.Action):
    """Stores ``--f-noise-std`` as a number or a level -> sigma mapping."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        try:
            setattr(namespace, self.dest, parse_f_noise_std(values))
        except ValueError as exc:
            parser.error(
                f"--f-noise-std {exc}" if str(exc).startswith(("must", "level")) else f"--f-noise-std: {exc}"
            )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults only where there is one worth showing (not None, False or an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, []) or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fnoise_maskrcnn.train",
        description="Train Mask R-CNN with or without F-Noise on COCO, any COCO-format dataset, or the "
        "built-in synthetic dataset (the default when no data is given). Run it under "
        "`torchrun --nproc_per_node=N -m fnoise_maskrcnn.train ...` for distributed training.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        help="a named set of defaults that explicit flags "
        "override (default: synthetic without data flags, else torchvision): "
        + "; ".join(f"{name}: {text}" for name, text in RECIPE_HELP.items()),
    )
    data = parser.add_argument_group("data (none given: the synthetic dataset)")
    data.add_argument(
        "--data-path",
        help="dataset root: COCO layout (annotations/instances_{train,val}2017.json, "
        "train2017/, val2017/) or the simple layout (train.json, val.json, images/)",
    )
    data.add_argument("--train-ann", help="COCO-format annotation file of the training set")
    data.add_argument("--train-images", help="folder the training images' file_name are relative to")
    data.add_argument(
        "--val-ann", help="COCO-format annotation file of the validation set (none: no evaluation)"
    )
    data.add_argument("--val-images", help="folder of the validation images (default: --train-images)")
    data.add_argument("--categories", nargs="+", metavar="NAME", help="train on these categories only")
    data.add_argument("--max-images", type=int, help="use the first N training images (by image id)")
    data.add_argument("--max-val-images", type=int, help="use the first N validation images (by image id)")
    data.add_argument(
        "--synthetic-images",
        type=int,
        default=64,
        help="training images of the synthetic dataset (its 64 validation images stay fixed)",
    )
    data.add_argument(
        "--scale-jitter",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="random zoom-out augmentation",
    )
    data.add_argument(
        "--photometric",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="random photometric distortion",
    )
    data.add_argument(
        "--aspect-ratio-group-factor",
        type=int,
        default=3,
        help="batch images of similar aspect ratio (< 0: off)",
    )

    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=ARCHITECTURES, default="resnet50", help="backbone")
    model.add_argument(
        "--weights",
        help="initial Mask R-CNN weights: a torchvision weights name (e.g. DEFAULT, "
        "downloads) or a local file (torchvision state_dict or our checkpoint)",
    )
    model.add_argument(
        "--weights-backbone",
        help="initial backbone weights: a torchvision name (e.g. DEFAULT) or "
        "a local file; none: from scratch",
    )
    model.add_argument(
        "--norm",
        choices=NORMS,
        help="normalisation: gn (GroupNorm, for training from scratch), "
        "bn, frozen_bn, syncbn (SyncBatchNorm under DDP); default: torchvision's rule",
    )
    model.add_argument(
        "--anchor-sizes",
        type=int,
        nargs=5,
        metavar="PX",
        help="RPN anchor sizes, one per FPN level (default: 32 64 128 256 512); smaller ones for "
        "small objects, e.g. 16 32 64 128 256",
    )
    model.add_argument(
        "--trainable-backbone-layers",
        type=int,
        help="trainable backbone stages (default: torchvision's rule, 3 with pretrained weights)",
    )
    model.add_argument(
        "--min-size", type=int, help="shorter image side after resizing (default: the recipe's)"
    )
    model.add_argument(
        "--max-size", type=int, help="longest image side after resizing (default: the recipe's)"
    )
    model.add_argument(
        "--model-kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_model_kwarg,
        help="extra torchvision MaskRCNN argument, repeatable (e.g. box_batch_size_per_image=128, "
        "rpn_post_nms_top_n_train=1000); VALUE is read as JSON, else as a string",
    )

    noise = parser.add_argument_group("F-Noise")
    noise.add_argument(
        "--f-noise", action="store_true", help="train with F-Noise between backbone body and FPN"
    )
    noise.add_argument(
        "--f-noise-std",
        nargs="+",
        action=_StdAction,
        default=0.1,
        metavar="SIGMA|LEVEL=SIGMA",
        help="noise scale sigma, or one per level (e.g. 0=0.05 3=0.2: other levels untouched)",
    )
    noise.add_argument(
        "--f-noise-schedule",
        choices=F_NOISE_SCHEDULES,
        default="constant",
        help="sigma over training, from --f-noise-std at the first iteration to --f-noise-std-end "
        "at the last (step: at --f-noise-step-epochs)",
    )
    noise.add_argument(
        "--f-noise-std-end",
        type=float,
        help="sigma at the last iteration (per-level sigmas: of the largest; all scale alike)",
    )
    noise.add_argument(
        "--f-noise-step-epochs",
        type=int,
        nargs="+",
        metavar="EPOCH",
        default=[],
        help="step schedule: epochs at which sigma steps towards --f-noise-std-end",
    )
    noise.add_argument(
        "--f-noise-warmup-iters", type=int, default=0, help="ramp sigma up from 0 over N iterations"
    )
    noise.add_argument(
        "--f-noise-mode", choices=F_NOISE_MODES, default="elementwise", help="magnitude estimate"
    )
    noise.add_argument(
        "--f-noise-dist",
        choices=F_NOISE_DISTRIBUTIONS,
        default="gaussian",
        help="law of the unit-variance noise eps (uniform: U(-sqrt3, sqrt3))",
    )
    noise.add_argument(
        "--f-noise-preset",
        choices=tuple(F_NOISE_PRESETS),
        help="turn F-Noise on with a named definition (explicit F-Noise flags override it): "
        "deepmirror-uniform multiplies every feature by U(0.8, 1.2); seed-report-001 adds "
        "N(mean(x), 0.1) noise of shape [H, W] to C5",
    )
    noise.add_argument(
        "--f-noise-levels",
        nargs="+",
        metavar="LEVEL",
        help="body outputs to perturb (resnet50: 0 1 2 3; mobilenet_v3: 0 1); default all",
    )

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=26, help="epochs to train (torchvision's schedule: 26)")
    opt.add_argument("-b", "--batch-size", type=int, default=2, help="images per process and step")
    opt.add_argument(
        "--lr",
        type=float,
        help=f"learning rate (default: {REFERENCE_LR} x total batch / "
        f"{REFERENCE_BATCH}, torchvision's reference rate scaled linearly)",
    )
    opt.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    opt.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay")
    opt.add_argument("--opt", choices=("sgd", "adamw"), default="sgd", help="optimizer")
    opt.add_argument(
        "--lr-scheduler",
        choices=("multistep", "cosine"),
        default="multistep",
        help="multistep: by epochs (--lr-steps); cosine: per iteration down to 0",
    )
    opt.add_argument(
        "--lr-steps",
        type=int,
        nargs="+",
        metavar="EPOCH",
        help="multistep: epochs at which the lr is multiplied by --lr-gamma "
        "(default: at 16/26 and 22/26 of --epochs, as torchvision's 26-epoch schedule)",
    )
    opt.add_argument("--lr-gamma", type=float, default=0.1, help="multistep: lr factor at each step")
    opt.add_argument(
        "--warmup-iters", type=int, default=1000, help="linear warmup iterations, from 0.001 x lr"
    )
    opt.add_argument(
        "--clip-grad", type=float, default=0.0, help="clip the gradient norm at this value (0: off)"
    )
    opt.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="mixed precision: float16 autocast + GradScaler on CUDA, bfloat16 autocast on the CPU "
        "(faster on CPUs with bf16 instructions; docs/benchmarks.md)",
    )

    run = parser.add_argument_group("run")
    run.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    run.add_argument("--workers", type=int, default=2, help="data-loading processes per training process")
    run.add_argument("--threads", type=int, help="CPU threads per training process (default: torch's choice)")
    run.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds initialisation, data order, augmentation, noise (default: 0)",
    )
    run.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms (slower); with --workers 0, resuming is bit-exact",
    )
    run.add_argument("--output-dir", help="run directory (default: runs/train-<date>-<time>)")
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --output-dir from its last.pth"
    )
    run.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (and after the last)")
    run.add_argument("--print-freq", type=int, default=20, help="log and print every N iterations")
    run.add_argument(
        "--visualize-every", type=int, default=0, help="save F-Noise pictures every N iterations (0: never)"
    )
    run.add_argument(
        "--test-only",
        action="store_true",
        help="only evaluate (the --weights, or with --resume the run's last.pth) and exit",
    )
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argparse errors for values that are of the right type but make no sense."""
    positive = [
        "epochs",
        "batch_size",
        "print_freq",
        "eval_every",
        "max_images",
        "max_val_images",
        "min_size",
        "max_size",
        "synthetic_images",
        "threads",
    ]
    for name in positive:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("workers", "warmup_iters", "visualize_every", "momentum", "weight_decay", "clip_grad"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if args.f_noise_levels and isinstance(args.f_noise_std, dict):
        parser.error(
            "--f-noise-levels: the per-level --f-noise-std already names the levels; give one of them"
        )
    if args.f_noise_std_end is not None and not (
        args.f_noise_std_end >= 0 and math.isfinite(args.f_noise_std_end)
    ):
        parser.error(f"--f-noise-std-end must be a finite number >= 0, got {args.f_noise_std_end}")
    if args.f_noise_schedule == "step" and not args.f_noise_step_epochs:
        parser.error("--f-noise-schedule step needs --f-noise-step-epochs")
    if args.f_noise_schedule != "constant" and args.f_noise_std_end is None:
        parser.error(f"--f-noise-schedule {args.f_noise_schedule} needs --f-noise-std-end")
    if args.f_noise_warmup_iters < 0:
        parser.error(f"--f-noise-warmup-iters must be >= 0, got {args.f_noise_warmup_iters}")
    if args.min_size and args.max_size and args.min_size > args.max_size:
        parser.error(f"--min-size ({args.min_size}) must not exceed --max-size ({args.max_size})")
    if args.trainable_backbone_layers is not None:
        limit = 5 if args.model == "resnet50" else 6
        if not 0 <= args.trainable_backbone_layers <= limit:
            parser.error(f"--trainable-backbone-layers must be in 0..{limit} for --model {args.model}")
    if args.data_path and (args.train_ann or args.train_images):
        parser.error("give either --data-path or --train-ann/--train-images, not both")
    if bool(args.train_ann) != bool(args.train_images):
        parser.error("--train-ann and --train-images go together")
    if (args.val_ann or args.val_images) and not args.train_ann:
        parser.error("--val-ann/--val-images need --train-ann/--train-images")
    if args.lr_steps and sorted(args.lr_steps) != args.lr_steps:
        parser.error(f"--lr-steps must be increasing, got {args.lr_steps}")
    if args.resume and not args.output_dir:
        parser.error("--resume needs --output-dir (the run to continue)")
    if args.test_only and not (args.weights or args.resume):
        parser.error("--test-only needs --weights or --resume")
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            parser.error(f"--device: unknown device {args.device!r}")
        if device.type not in ("cpu", "cuda"):
            parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available on this machine")


class _ArgvError(Exception):
    """A command-line error found while looking for the explicit flags (reported by the full parse)."""


def _explicit_flags(argv: Sequence[str] | None) -> dict[str, Any]:
    """The options given on the command line (not defaults), as ``{dest: value}``."""
    parser = build_parser()
    for action in parser._actions:  # argparse has no public way to list them
        action.default = argparse.SUPPRESS
    argv = sys.argv[1:] if argv is None else list(argv)

    def quiet(message: str) -> None:  # the full parser reports the error (or prints --help) itself
        raise _ArgvError(message)

    parser.error = quiet  # type: ignore[method-assign]
    try:
        return vars(parser.parse_args([arg for arg in argv if arg not in ("-h", "--help")]))
    except _ArgvError:
        return {}


_DATA_FLAGS = ("data_path", "train_ann", "train_images")


def _recipe_name(explicit: dict[str, Any]) -> str:
    """The recipe the explicit flags ask for: ``--recipe``, else ``synthetic`` without data flags, else
    ``torchvision``."""
    if explicit.get("recipe"):
        return explicit["recipe"]
    return "torchvision" if any(explicit.get(name) for name in _DATA_FLAGS) else "synthetic"


def build_recipe_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """:func:`build_parser` with the defaults of the recipe (and F-Noise preset) that ``argv`` selects."""
    explicit = _explicit_flags(argv)
    parser = build_parser()
    name = _recipe_name(explicit)
    parser.set_defaults(recipe=name, **recipe_defaults(name))
    preset = explicit.get("f_noise_preset")
    if preset:
        values = F_NOISE_PRESETS[preset]
        parser.set_defaults(
            f_noise=True,
            f_noise_std=values["std"],
            f_noise_mode=values["mode"],
            f_noise_dist=values["distribution"],
            f_noise_levels=values["levels"],
        )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses and checks the command line; with ``--resume``, starts from the run's saved arguments.

    The recipe (``--recipe``, or the default one) sets the parser's defaults, and explicit flags win over
    them. Flags given with ``--resume`` override the saved ones, except those in :data:`FIXED_ON_RESUME`,
    which must keep their value.
    """
    parser = build_recipe_parser(argv)
    args = parser.parse_args(argv)
    if args.resume and args.output_dir:
        last = Path(args.output_dir) / "last.pth"
        if not last.is_file():
            parser.error(f"--resume: {last} does not exist")
        try:
            saved = load_checkpoint(last).get("args") or {}
        except CheckpointError as exc:
            parser.error(f"--resume: {exc}")
        explicit = _explicit_flags(argv)
        for name, value in explicit.items():
            if name in FIXED_ON_RESUME and name in saved and saved[name] != value:
                parser.error(
                    f"--resume: --{name.replace('_', '-')} {value} differs from the run's {saved[name]}"
                )
        merged = {**vars(args), **{k: v for k, v in saved.items() if k in vars(args)}, **explicit}
        merged.update(resume=True, output_dir=args.output_dir, test_only=args.test_only)
        args = argparse.Namespace(**merged)
    _check_args(parser, args)
    return args


@dataclass(frozen=True)
class DataSpec:
    train_ann: Path
    train_images: Path
    val_ann: Path | None
    val_images: Path | None
    synthetic: bool


def resolve_data(args: argparse.Namespace) -> DataSpec:
    """Where the data is: ``--data-path``, ``--train-ann`` and co., or the synthetic default."""
    if args.train_ann:
        val_images = args.val_images or args.train_images
        return DataSpec(
            Path(args.train_ann),
            Path(args.train_images),
            Path(args.val_ann) if args.val_ann else None,
            Path(val_images) if args.val_ann else None,
            False,
        )
    if args.data_path:
        root = Path(args.data_path)
        coco_train = root / "annotations" / "instances_train2017.json"
        if coco_train.is_file():
            coco_val = root / "annotations" / "instances_val2017.json"
            has_val = coco_val.is_file()
            return DataSpec(
                coco_train,
                root / "train2017",
                coco_val if has_val else None,
                root / "val2017" if has_val else None,
                False,
            )
        if (root / "train.json").is_file():
            has_val = (root / "val.json").is_file()
            return DataSpec(
                root / "train.json",
                root / "images",
                root / "val.json" if has_val else None,
                root / "images" if has_val else None,
                False,
            )
        raise UserError(
            f"--data-path {root}: found neither annotations/instances_train2017.json (COCO layout) "
            "nor train.json (simple layout)"
        )
    from .data import synthetic

    splits = synthetic.default_dataset(num_images=args.synthetic_images)
    return DataSpec(splits.train_ann, splits.train_images, splits.val_ann, splits.val_images, True)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on all ``keys`` (e.g. ``(seed, stream, rank, epoch)``)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _set_deterministic(enabled: bool) -> None:
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False


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


def _f_noise_schedule(args: argparse.Namespace, iters_per_epoch: int) -> FNoiseSchedule:
    """The sigma schedule of ``--f-noise-schedule`` and co. (a multiplier of ``--f-noise-std``)."""
    std = args.f_noise_std
    base = max(std.values()) if isinstance(std, dict) else float(std)
    end = args.f_noise_std_end
    if end is not None and end > 0 and base == 0:
        raise UserError("--f-noise-std-end: needs a nonzero --f-noise-std to scale")
    return FNoiseSchedule(
        args.f_noise_schedule,
        end / base if end is not None and base > 0 else 1.0,
        total_iters=iters_per_epoch * args.epochs,
        iters_per_epoch=iters_per_epoch,
        step_epochs=tuple(args.f_noise_step_epochs),
        warmup_iters=args.f_noise_warmup_iters,
    )


class Run:
    """One training run: everything built from the arguments, and its checkpointing."""

    logger: RunLogger

    def __init__(
        self,
        args: argparse.Namespace,
        ctx: dist_utils.DistributedContext,
        resumed: dict[str, Any] | None = None,
    ) -> None:
        """``resumed``: the checkpoint being resumed; the model is then rebuilt from its ``model_config``."""
        self.args = args
        self.ctx = ctx
        self.device = ctx.device
        self.output_dir = Path(args.output_dir)
        self.data = resolve_data(args)
        if args.min_size is None:
            args.min_size = COCO_MIN_SIZE
        if args.max_size is None:
            args.max_size = max(COCO_MAX_SIZE, args.min_size)
        if args.lr is None:
            base = REFERENCE_LR if args.opt == "sgd" else 1e-4
            args.lr = base * args.batch_size * ctx.world_size / REFERENCE_BATCH
        # Left unresolved in args, so that a resumed run with a new --epochs gets the matching default.
        self.lr_steps = args.lr_steps or [round(args.epochs * 16 / 26), round(args.epochs * 22 / 26)]

        self.train_set = CocoInstances(
            self.data.train_images,
            self.data.train_ann,
            build_transforms(True, scale_jitter=args.scale_jitter, photometric=args.photometric),
            categories=args.categories,
            max_images=args.max_images,
        )
        self.categories = self.train_set.categories
        self.val_set = None
        if self.data.val_ann is not None:
            self.val_set = CocoInstances(
                self.data.val_images,
                self.data.val_ann,
                build_transforms(False),
                categories=args.categories,
                max_images=args.max_val_images,
            )
            if self.val_set.categories != self.categories:
                raise UserError(
                    f"{self.data.val_ann}: categories differ from those of {self.data.train_ann}; "
                    "select common ones with --categories"
                )
        self.train_loader = build_dataloader(
            self.train_set,
            batch_size=args.batch_size,
            train=True,
            workers=args.workers,
            distributed=ctx.distributed,
            aspect_ratio_group_factor=args.aspect_ratio_group_factor,
            seed=args.seed,
        )
        self.val_loader = None
        if self.val_set is not None:
            self.val_loader = build_dataloader(
                self.val_set,
                batch_size=args.batch_size,
                train=False,
                workers=args.workers,
                distributed=ctx.distributed,
                seed=args.seed,
            )
        self.iters_per_epoch = len(self.train_loader)

        # Same seed -> same initial weights, with or without F-Noise; the noise has its own generator.
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        config = {
            "arch": args.model,
            "num_classes": len(self.categories) + 1,
            "trainable_backbone_layers": args.trainable_backbone_layers,
            "norm": args.norm,
            "anchor_sizes": args.anchor_sizes,
            "f_noise": {
                "enabled": args.f_noise,
                "std": args.f_noise_std,
                "mode": args.f_noise_mode,
                "distribution": args.f_noise_dist,
                "levels": args.f_noise_levels,
            },
            "model_kwargs": {**dict(args.model_kwarg), "min_size": args.min_size, "max_size": args.max_size},
        }
        try:
            if resumed is not None:  # no weights to load (or download): the checkpoint's replace them
                model = build_model(resumed["model_config"])
            else:
                model = build_model(config, weights=args.weights, weights_backbone=args.weights_backbone)
        except CheckpointError:
            raise
        except (ValueError, FileNotFoundError, RuntimeError, TypeError) as exc:
            raise UserError(str(exc).splitlines()[0]) from exc
        self.model_config = model.build_config
        self.model = model.to(self.device)
        self.f_noise_generator: torch.Generator | None = None
        if args.f_noise:
            self.f_noise_generator = torch.Generator(device=self.device)
            self.f_noise_generator.manual_seed(derive_seed(args.seed, _STREAM_F_NOISE, ctx.rank))
            self.model.backbone.f_noise.generator = self.f_noise_generator
        self.f_noise_schedule = _f_noise_schedule(args, self.iters_per_epoch) if args.f_noise else None
        torch.manual_seed(derive_seed(args.seed, _STREAM_TRAIN, ctx.rank))
        random.seed(derive_seed(args.seed, _STREAM_TRAIN, ctx.rank))

        params = [p for p in self.model.parameters() if p.requires_grad]
        if args.opt == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
            )
        else:
            self.optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
        self.schedule = LrSchedule(
            args.lr_scheduler,
            self.iters_per_epoch,
            self.iters_per_epoch * args.epochs,
            milestones=self.lr_steps,
            gamma=args.lr_gamma,
            warmup_iters=args.warmup_iters,
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.scaler = torch.amp.GradScaler("cuda") if args.amp and self.device.type == "cuda" else None
        self.state = TrainState()
        self.data_rng = DataRng(self._data_seed(0))
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.ddp_model: nn.Module = self.model
        if ctx.distributed:
            if self.model_config.get("norm") == "syncbn":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    def _data_seed(self, epoch: int) -> int:
        return derive_seed(self.args.seed, _STREAM_DATA, self.ctx.rank, epoch)

    def resume(self, checkpoint: dict[str, Any]) -> None:
        """Loads a training checkpoint's state: weights, optimizer, schedule, scaler, RNGs, position."""
        if checkpoint["categories"] != self.categories:
            raise UserError(f"{self.output_dir / 'last.pth'}: its categories differ from those of the data")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        # The position comes from the checkpoint, the schedule from these flags (e.g. a longer --epochs).
        schedule = dict(vars(self.schedule))
        self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        vars(self.schedule).update(schedule)
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.state = TrainState.from_state_dict(checkpoint["train_state"])
        self.best_metric = checkpoint.get("best_metric")
        self.best_epoch = checkpoint.get("best_epoch")
        self.data_rng = DataRng(self._data_seed(self.state.epoch))
        rng = checkpoint["rng"]
        _restore_rng(
            rng[self.ctx.rank] if self.ctx.rank < len(rng) else rng[0], self.f_noise_generator, self.data_rng
        )

    def checkpoint(self) -> dict[str, Any]:
        """The training checkpoint (the package's format plus optimizer, scheduler, scaler, RNGs, position).

        Collective under DDP: every process contributes its RNG states.
        """
        rng = dist_utils.all_gather_objects(_rng_state(self.f_noise_generator, self.data_rng))
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "model_config": self.model_config,
            "categories": [{"id": int(c["id"]), "name": str(c["name"])} for c in self.categories],
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.state.epoch,
            "iteration": self.state.iteration,
            "train_state": self.state.state_dict(),
            "rng": [{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in r.items()} for r in rng],
            "args": vars(self.args),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
        }

    def save(self, best: bool = False) -> None:
        checkpoint = self.checkpoint()
        if self.ctx.is_main:
            save_checkpoint(checkpoint, self.output_dir / "last.pth")
            if best:
                save_checkpoint(checkpoint, self.output_dir / "best.pth")
        dist_utils.barrier()

    def evaluate(self) -> dict[str, Any]:
        """Validation losses and COCO AP; the AP entries are None on ranks other than 0."""
        assert self.val_loader is not None and self.val_set is not None
        val = evaluate_losses(self.ddp_model, self.val_loader, self.device, self.args.amp)
        metrics = evaluate_ap(
            self.model, self.val_loader, self.device, self.categories, self.val_set.coco, self.args.amp
        )
        return {"val": val, "metrics": metrics}

    def visualize(self, iteration: int, images: Sequence[torch.Tensor]) -> None:
        """Every ``--visualize-every`` iterations, pictures of the perturbation (rank 0), leaving RNGs as
        they were."""
        every = self.args.visualize_every
        if not every or (iteration + 1) % every or not self.ctx.is_main:
            return
        from .visualize import log_fnoise_pictures

        generator_state = self.f_noise_generator.get_state() if self.f_noise_generator is not None else None
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            log_fnoise_pictures(self.model, list(images[:2]), self.output_dir, self.logger.writer, iteration)
        if generator_state is not None:
            self.f_noise_generator.set_state(generator_state)
        self.model.train()


def _resolved_config(run: Run) -> dict[str, Any]:
    args = run.args
    return {
        **vars(args),
        "train_ann": str(run.data.train_ann),
        "train_images": str(run.data.train_images),
        "val_ann": str(run.data.val_ann) if run.data.val_ann else None,
        "val_images": str(run.data.val_images) if run.data.val_images else None,
        "synthetic_data": run.data.synthetic,
        "device": str(run.device),
        "world_size": run.ctx.world_size,
        "total_batch_size": args.batch_size * run.ctx.world_size,
        "amp_dtype": ("float16" if run.device.type == "cuda" else "bfloat16") if args.amp else None,
        "iters_per_epoch": run.iters_per_epoch,
        "num_train_images": len(run.train_set),
        "num_val_images": len(run.val_set) if run.val_set is not None else 0,
        "categories": run.categories,
        "lr_steps": run.lr_steps,
        "model_config": run.model_config,
        "torch": torch.__version__,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _ap_history(metrics_file: Path) -> list[str]:
    """``"epoch: bbox AP / segm AP"`` for each evaluated epoch recorded in ``metrics.jsonl``."""
    lines = []
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            record = json.loads(line)
            if record.get("type") == "epoch" and record.get("segm"):
                lines.append(f"{record['epoch']}: {record['bbox']['AP']:.3f} / {record['segm']['AP']:.3f}")
    return lines


def _print_summary(run: Run, last_epoch: dict[str, Any] | None, seconds: float) -> None:
    out = run.output_dir
    print(
        f"\nDone: {run.state.epoch} epoch(s), {run.state.iteration} iterations, "
        f"{_fmt_time(seconds)} this session."
    )
    if last_epoch is not None:
        train = last_epoch["train"]
        print(
            f"  train loss (last epoch mean): {_fmt(train.get('loss'))}  "
            + "  ".join(f"{k}: {_fmt(train.get(k))}" for k in LOSS_NAMES)
        )
        if last_epoch.get("val"):
            print(f"  val loss: {_fmt(last_epoch['val']['loss'])}")
        if last_epoch.get("segm"):
            print(
                f"  bbox AP: {_fmt(last_epoch['bbox']['AP'])}  segm AP: {_fmt(last_epoch['segm']['AP'])}  "
                f"(best segm AP {_fmt(run.best_metric)} after epoch {run.best_epoch})"
            )
        if last_epoch.get("f_noise_nsr"):
            nsr = "  ".join(f"{k}: {v:.4f}" for k, v in last_epoch["f_noise_nsr"].items())
            print(f"  F-Noise noise-to-signal ratio per level: {nsr}")
    print(f"Files in {out}:")
    print(f"  {out / 'config.json'}    resolved configuration")
    print(f"  {out / 'metrics.jsonl'}  one JSON object per logged iteration and per epoch")
    print(f"  {out / 'last.pth'}       checkpoint after the last epoch (resume with --resume)")
    if (out / "best.pth").is_file():
        print(f"  {out / 'best.pth'}       checkpoint with the best segm AP")
    print(f"  TensorBoard: tensorboard --logdir {out}")
    history = _ap_history(out / "metrics.jsonl")
    if history:
        print("Validation bbox AP / segm AP by epoch:  " + "   ".join(history))
    if run.val_set is not None and (out / "best.pth").is_file():
        image = Path(run.val_set.coco.imgs[run.val_set.image_ids[0]]["file_name"])
        image = (run.data.val_images or Path(".")) / image
        print(
            f"See the predictions on a validation image (a short run scores low: lower --score-thresh):\n"
            f"  python -m fnoise_maskrcnn.predict --checkpoint {out / 'best.pth'} --score-thresh 0.3 "
            f"--out-dir {out / 'predictions'} {image}"
        )


def _fmt_time(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


def _test_only(run: Run) -> int:
    if run.val_loader is None:
        raise UserError("--test-only needs validation data (--val-ann, or --data-path with a val split)")
    result = run.evaluate()
    if run.ctx.is_main:
        print("val losses: " + "  ".join(f"{k}: {v:.4f}" for k, v in result["val"].items()))
        print(format_metrics_table(result["metrics"]))
    return 0


def _train(run: Run) -> int:
    args, ctx, state = run.args, run.ctx, run.state
    start_time = time.perf_counter()
    last_epoch_record: dict[str, Any] | None = None
    with StopSignal() as stop:
        try:
            while state.epoch < args.epochs:
                epoch = state.epoch
                if state.epoch_iteration == 0:
                    state.start_epoch(epoch)
                    run.data_rng = DataRng(run._data_seed(epoch))
                set_epoch(run.train_loader, epoch)
                epoch_start = time.perf_counter()
                train_one_epoch(
                    run.ddp_model,
                    run.optimizer,
                    run.lr_scheduler,
                    skip_batches(run.train_loader, state.epoch_iteration),
                    run.data_rng,
                    state,
                    run.device,
                    iters_in_epoch=run.iters_per_epoch,
                    logger=run.logger,
                    stop=stop,
                    scaler=run.scaler,
                    amp=args.amp,
                    clip_grad=args.clip_grad,
                    print_freq=args.print_freq,
                    on_iteration=run.visualize,
                    f_noise_schedule=run.f_noise_schedule,
                )
                record: dict[str, Any] = {
                    "epoch": epoch,
                    "iteration": state.iteration,
                    "train": state.mean_losses(),
                    "val": None,
                    "bbox": None,
                    "segm": None,
                    "f_noise_nsr": state.mean_nsr(),
                    "lr": run.optimizer.param_groups[0]["lr"],
                    "train_time": time.perf_counter() - epoch_start,
                }
                if args.f_noise and record["f_noise_nsr"] is None:
                    record["f_noise_nsr"] = {}
                is_best = False
                evaluate = run.val_loader is not None and (
                    (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs
                )
                state.start_epoch(epoch + 1)
                run.data_rng = DataRng(run._data_seed(epoch + 1))
                if evaluate:
                    run.save()  # the trained epoch is on disk before evaluation starts
                    eval_start = time.perf_counter()
                    result = run.evaluate()
                    record["eval_time"] = time.perf_counter() - eval_start
                    record["val"] = result["val"]
                    metrics = result["metrics"]
                    if ctx.is_main:
                        record.update(
                            bbox=metrics["bbox"],
                            segm=metrics["segm"],
                            per_category=metrics["per_category"],
                            val_images_evaluated=metrics["num_images"],
                        )
                        print(
                            "Validation losses: "
                            + "  ".join(f"{k}: {v:.4f}" for k, v in record["val"].items())
                        )
                        print(format_metrics_table(metrics), flush=True)
                    segm_ap = dist_utils.all_gather_objects(metrics["segm"]["AP"] if metrics else None)[0]
                    if run.best_metric is None or segm_ap > run.best_metric:
                        run.best_metric, run.best_epoch, is_best = segm_ap, epoch, True
                run.save(best=is_best)
                run.logger.epoch(record)
                last_epoch_record = record
                stopped = dist_utils.all_reduce_sum({"stop": float(stop.signum is not None)}, run.device)[
                    "stop"
                ]
                if stopped and state.epoch < args.epochs:
                    raise TrainingInterrupted(stop.signum or 15)
        except TrainingInterrupted as exc:
            if state.epoch_iteration > 0:
                run.save()
            if ctx.is_main:
                print(
                    f"error: {exc} at iteration {state.iteration} (epoch {state.epoch}); state saved to "
                    f"{run.output_dir / 'last.pth'}; continue with --resume --output-dir {run.output_dir}",
                    file=sys.stderr,
                )
            return 128 + exc.signum
        except NonFiniteLossError as exc:
            run.save()
            if ctx.is_main:
                print(
                    f"error: {exc}; the state before this iteration is in {run.output_dir / 'last.pth'} "
                    "(--resume continues from it; consider a lower --lr or --clip-grad)",
                    file=sys.stderr,
                )
            return 1
    if ctx.is_main:
        _print_summary(run, last_epoch_record, time.perf_counter() - start_time)
    return 0


def _lock_output_dir(output_dir: Path) -> RunLock:
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


def _run(args: argparse.Namespace) -> int:
    ctx = dist_utils.init_distributed(args.device)
    stack = contextlib.ExitStack()
    try:
        if args.output_dir is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            args.output_dir = str(Path("runs") / f"train-{stamp}")
        output_dir = Path(args.output_dir)
        lock = _lock_output_dir(output_dir) if ctx.is_main and not args.test_only else None
        if lock is not None:
            stack.callback(lock.release)
        if not args.resume and not args.test_only and (output_dir / "last.pth").exists():
            raise UserError(
                f"--output-dir {output_dir} already holds a run (last.pth); "
                "pass --resume to continue it or choose another directory"
            )
        resumed = load_checkpoint(output_dir / "last.pth") if args.resume else None
        run = Run(args, ctx, resumed)
        if resumed is not None:
            run.resume(resumed)
        if args.test_only:
            return _test_only(run)
        config = _resolved_config(run)
        if ctx.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(json.dumps(config, indent=2) + "\n", output_dir / "config.json")
            print("config: " + json.dumps(config, indent=2), flush=True)
            if args.resume:
                truncate_metrics(output_dir / "metrics.jsonl", run.state.iteration, run.state.epoch)
                print(
                    f"resuming from {output_dir / 'last.pth'}: epoch {run.state.epoch}, "
                    f"iteration {run.state.iteration}",
                    flush=True,
                )
        run.logger = RunLogger(
            output_dir, enabled=ctx.is_main, purge_step=run.state.iteration if args.resume else None
        )
        try:
            return _train(run)
        finally:
            run.logger.close()
    finally:
        stack.close()
        dist_utils.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    _set_deterministic(args.deterministic)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    except (UserError, DatasetError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.use_deterministic_algorithms(deterministic_before)


if __name__ == "__main__":
    sys.exit(main())
