"""The command line of ``python -m fnoise_maskrcnn.train``, turned into one :class:`TrainConfig`.

Defaults come in layers, as in timm's ``_parse_args``: the parser's own defaults, then the recipe's
(``--recipe``, or the one the data flags imply), then an F-Noise preset's, then, with ``--resume``, the
run's saved configuration; the command line is parsed once on top. Flags whose field is marked
``fixed_on_resume`` in :mod:`fnoise_maskrcnn.config` must keep the saved value.
"""

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .config import REFERENCE_BATCH, REFERENCE_LR, TrainConfig, fixed_fields
from .engine.allocator import ALLOCATOR_CHOICES
from .fnoise import F_NOISE_DISTRIBUTIONS, F_NOISE_MODES, F_NOISE_PRESETS, F_NOISE_SCHEDULES, FNoiseConfig
from .io.checkpoint import CheckpointError, load_checkpoint
from .models import ARCHITECTURES, BODY_LEVELS, NORMS
from .recipes import RECIPE_HELP, RECIPES, recipe_defaults

__all__ = ["build_parser", "parse", "parse_f_noise_std", "Parsed"]

_DATA_FLAGS = ("data_path", "train_ann", "train_images")


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


class _SetKeyword(argparse.Action):
    """``--model-kwarg KEY=VALUE``, repeatable: sets KEY in the list of ``[KEY, VALUE]`` pairs, in place
    when the defaults (a recipe's, or a resumed run's) already set it, so that explicit flags override
    defaults and the same command gives the same list when a run is resumed."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string=None
    ) -> None:
        key, value = values
        pairs = [list(pair) for pair in getattr(namespace, self.dest) or []]
        for pair in pairs:
            if pair[0] == key:
                pair[1] = value
                break
        else:
            pairs.append([key, value])
        setattr(namespace, self.dest, pairs)


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
    """The parser of ``python -m fnoise_maskrcnn.train`` with its plain defaults (no recipe applied)."""
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
    _add_data_flags(parser)
    _add_model_flags(parser)
    _add_f_noise_flags(parser)
    _add_optim_flags(parser)
    _add_run_flags(parser)
    return parser


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    """Data: where the images and annotations are, augmentation, batching."""
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
        "--train-loss-images",
        type=int,
        default=0,
        metavar="N",
        help="at each evaluation, also measure the loss on the first N training images with validation "
        "transforms and F-Noise off (the clean training loss, for the train/validation gap; 0: off)",
    )
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


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Model: architecture, initial weights, normalisation, sizes, MaskRCNN arguments."""
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
        action=_SetKeyword,
        default=[],
        metavar="KEY=VALUE",
        type=_model_kwarg,
        help="extra torchvision MaskRCNN argument, repeatable (e.g. box_batch_size_per_image=128, "
        "rpn_post_nms_top_n_train=1000); VALUE is read as JSON, else as a string; a KEY the recipe "
        "sets takes this VALUE instead",
    )


def _add_f_noise_flags(parser: argparse.ArgumentParser) -> None:
    """F-Noise: whether, how strong, where, in which form and on which schedule."""
    noise = parser.add_argument_group("F-Noise")
    noise.add_argument(
        "--f-noise", action="store_true", help="train with F-Noise between backbone body and FPN"
    )
    noise.add_argument(
        "--f-noise-std",
        nargs="+",
        action=_StdAction,
        default=FNoiseConfig.std,
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
        "--f-noise-mode", choices=F_NOISE_MODES, default=FNoiseConfig.mode, help="magnitude estimate"
    )
    noise.add_argument(
        "--f-noise-dist",
        choices=F_NOISE_DISTRIBUTIONS,
        default=FNoiseConfig.distribution,
        help="law of the unit-variance noise eps (uniform: U(-sqrt3, sqrt3))",
    )
    noise.add_argument(
        "--f-noise-preset",
        choices=tuple(F_NOISE_PRESETS),
        help="turn F-Noise on with a named definition (explicit F-Noise flags override it): "
        + "; ".join(f"{name}: {preset.describe()}" for name, preset in F_NOISE_PRESETS.items()),
    )
    noise.add_argument(
        "--f-noise-levels",
        nargs="+",
        metavar="LEVEL",
        help="body outputs to perturb ("
        + "; ".join(f"{arch}: {' '.join(levels)}" for arch, levels in BODY_LEVELS.items())
        + "); default all",
    )


def _add_optim_flags(parser: argparse.ArgumentParser) -> None:
    """Optimisation: optimizer, learning-rate schedule, length, precision."""
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
        help="mixed precision: float16 autocast + GradScaler on CUDA, bfloat16 autocast on a CPU with "
        "bfloat16 instructions (AVX-512-BF16 or AMX); other CPUs train in float32, as emulated bfloat16 is "
        "much slower (docs/training.md)",
    )


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Run: seed, device, output, evaluation, logging and checkpoint cadence."""
    run = parser.add_argument_group("run")
    run.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    run.add_argument("--workers", type=int, default=2, help="data-loading processes per training process")
    run.add_argument("--threads", type=int, help="CPU threads per training process (default: torch's choice)")
    run.add_argument(
        "--cpu-allocator",
        choices=ALLOCATOR_CHOICES,
        default="keep",
        help="keep (default): glibc malloc reuses freed memory instead of mapping fresh pages for every "
        "large tensor (no page faults after the first step; resident memory stays at its peak); "
        "system: the C library's defaults",
    )
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
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="N",
        help="also save last.pth every N iterations (atomic, one rolling file; 0: only at epoch ends)",
    )
    run.add_argument(
        "--visualize-every", type=int, default=0, help="save F-Noise pictures every N iterations (0: never)"
    )
    run.add_argument(
        "--test-only",
        action="store_true",
        help="only evaluate (the --weights, or with --resume the run's last.pth) and exit",
    )


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argparse errors for values that are of the right type but make no sense."""
    _check_ranges(parser, args)
    _check_f_noise_flags(parser, args)
    _check_combinations(parser, args)
    if args.device is not None:
        _check_device(parser, args.device)


def _check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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
    for name in (
        "workers",
        "train_loss_images",
        "warmup_iters",
        "visualize_every",
        "checkpoint_every",
        "momentum",
        "weight_decay",
        "clip_grad",
    ):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")


def _check_f_noise_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


def _check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


def _check_device(parser: argparse.ArgumentParser, name: str) -> None:
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device: unknown device {name!r}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda[:N], got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: CUDA is not available on this machine")


class _QuietParser(argparse.ArgumentParser):
    """Raises instead of exiting: the full parse reports command-line errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def _pre_parser() -> argparse.ArgumentParser:
    """The few flags that choose the layers of defaults, read before the full parse."""
    pre = _QuietParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe")
    pre.add_argument("--f-noise-preset")
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--output-dir")
    for name in _DATA_FLAGS:
        pre.add_argument("--" + name.replace("_", "-"))
    return pre


class Parsed:
    """The outcome of :func:`parse`: the resolved configuration, and the checkpoint to resume (read once)."""

    def __init__(self, config: TrainConfig, resumed: dict[str, Any] | None) -> None:
        self.config = config
        self.resumed = resumed


def _resume_from(
    parser: argparse.ArgumentParser, output_dir: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint of the run to resume (read here, once) and its saved configuration as flags; an
    argparse error when either is missing or unreadable."""
    if not output_dir:
        parser.error("--resume needs --output-dir (the run to continue)")
    last = Path(output_dir) / "last.pth"
    if not last.is_file():
        parser.error(f"--resume: {last} does not exist")
    try:
        checkpoint = load_checkpoint(last)
    except CheckpointError as exc:
        parser.error(f"--resume: {exc}")
    saved = checkpoint.get("config") or checkpoint.get("args")
    if not isinstance(saved, dict):
        parser.error(f"--resume: {last} holds no training configuration")
    try:
        return checkpoint, TrainConfig.read(saved).flags()
    except (TypeError, ValueError) as exc:
        parser.error(f"--resume: {last} holds an unreadable training configuration ({exc})")


def parse(argv: Sequence[str] | None = None, world_size: int = 1) -> Parsed:
    """Parses and checks the command line into a resolved :class:`TrainConfig` (see the module doc)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        pre, _ = _pre_parser().parse_known_args([a for a in argv if a not in ("-h", "--help")])
    except ValueError:
        pre = _pre_parser().parse_args([])
    parser = build_parser()
    recipe = pre.recipe or ("torchvision" if any(getattr(pre, n) for n in _DATA_FLAGS) else "synthetic")
    if recipe in RECIPES:
        parser.set_defaults(recipe=recipe, **recipe_defaults(recipe))
    if pre.f_noise_preset in F_NOISE_PRESETS:
        preset = TrainConfig().replace("model", f_noise=F_NOISE_PRESETS[pre.f_noise_preset])
        parser.set_defaults(**{k: v for k, v in preset.flags().items() if k.startswith("f_noise")})
    resumed, saved = None, {}
    if pre.resume:
        resumed, saved = _resume_from(parser, pre.output_dir)
        parser.set_defaults(
            **{k: v for k, v in saved.items() if k not in ("resume", "test_only", "output_dir")}
        )
    args = parser.parse_args(argv)
    for name in fixed_fields() if resumed is not None else ():
        if name in saved and _comparable(getattr(args, name)) != _comparable(saved[name]):
            flag = "--" + name.replace("_", "-")
            parser.error(f"--resume: {flag} {getattr(args, name)} differs from the run's {saved[name]}")
    _check_args(parser, args)
    _check_levels(parser, args)
    try:
        config = TrainConfig.from_flags(vars(args), world_size)
    except ValueError as exc:
        parser.error(str(exc))
    return Parsed(config, resumed)


def _check_levels(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--f-noise-levels`` and per-level ``--f-noise-std`` name levels of the chosen architecture."""
    std = args.f_noise_std
    named = [("--f-noise-levels", level) for level in args.f_noise_levels or ()]
    named += [("--f-noise-std", level) for level in std] if isinstance(std, dict) else []
    allowed = BODY_LEVELS.get(args.model, ())
    for flag, level in named:
        if level not in allowed:
            parser.error(
                f"{flag}: no level {level} in --model {args.model}; its levels are {' '.join(allowed)}"
            )


def _comparable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))
