"""Draw the F-Noise perturbation of one image's backbone features, in training and in eval mode.

Command line::

    python -m fnoise_maskrcnn.visualize --checkpoint CKPT --image IMG --out fnoise.png

What the picture shows: :mod:`fnoise_maskrcnn.visualization`, which does the work.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .device import resolve_device
from .fnoise import F_NOISE_MODES, FNoise
from .io.images import ImageError, read_image_tensor
from .visualization import FNoisePicture, backbone_f_noise, fnoise_perturbation, plot_fnoise, save_figure

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fnoise_maskrcnn.visualize",
        description=(
            "Draw the F-Noise perturbation of one image's backbone features, in training mode and in "
            "eval mode (where it is zero). If the checkpoint's model has F-Noise disabled (std 0), the "
            "picture shows what its configured sigma would do; --f-noise-std/--f-noise-mode/"
            "--f-noise-levels override the model's settings."
        ),
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="a checkpoint written by train (last.pth, best.pth)"
    )
    parser.add_argument("--image", required=True, type=Path, help="an image file (JPEG, PNG)")
    parser.add_argument("--out", required=True, type=Path, help="output PNG")
    parser.add_argument("--f-noise-std", type=float, help="sigma to show (default: the model's)")
    parser.add_argument("--f-noise-mode", choices=F_NOISE_MODES, help="mode to show (default: the model's)")
    parser.add_argument(
        "--f-noise-levels", nargs="+", metavar="LEVEL", help="body levels to perturb (default: the model's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    parser.add_argument(
        "--min-size", type=int, help="resize the image's shorter side to this (default: the model's min_size)"
    )
    parser.add_argument(
        "--max-size", type=int, help="cap the longer side at this (default: the model's max_size)"
    )
    parser.add_argument(
        "--device", default="auto", help="'auto' (GPU when there is one), 'cpu', 'cuda', 'cuda:1' ..."
    )
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses bad values through ``parser.error`` (exit 2, usage line)."""
    if args.f_noise_std is not None and not (math.isfinite(args.f_noise_std) and args.f_noise_std >= 0):
        parser.error(f"--f-noise-std must be a finite number >= 0, got {args.f_noise_std}")
    for flag, value in (("--min-size", args.min_size), ("--max-size", args.max_size)):
        if value is not None and value < 32:
            parser.error(f"{flag} must be >= 32, got {value}")
    if args.image.is_dir():
        parser.error(f"--image {args.image}: is a folder, expected an image file")
    if not args.image.is_file():
        parser.error(f"--image {args.image}: no such file")
    try:
        args.device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")


def _check_levels(parser: argparse.ArgumentParser, model: nn.Module, levels: Sequence[str] | None) -> None:
    available = list(model.backbone.body.return_layers.values())
    unknown = [level for level in levels or () if level not in available]
    if unknown:
        parser.error(
            f"--f-noise-levels: unknown level(s) {', '.join(unknown)}; allowed: {', '.join(available)}"
        )


def _sigma_shown(
    std: float | None, f_noise: FNoise, checkpoint: Mapping[str, Any]
) -> tuple[float | None, str]:
    """``(sigma to show, note)``: ``--f-noise-std``, else the model's own (``None``); for a model with F-Noise
    disabled, its configured sigma (or 0.1) and a note that says so."""
    if std is not None or f_noise.std != 0.0:
        return std, ""
    configured = float(((checkpoint.get("model_config") or {}).get("f_noise") or {}).get("std") or 0.0)
    std = configured if configured > 0 else 0.1
    return std, f"F-Noise is disabled in this model; showing what σ={std:g} would do"


def _print_ratios(picture: FNoisePicture) -> None:
    for phase, levels in (("train", picture.train), ("eval ", picture.eval)):
        for level in levels:
            print(
                f"level {level.name} {list(level.shape)}: {phase} ‖noise‖/‖x‖ = {level.noise_to_signal:.4g}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    from .io.checkpoint import CheckpointError
    from .io.model_io import model_from_checkpoint

    parser = _build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    try:
        image = read_image_tensor(args.image)
    except ImageError as exc:
        print(f"error: --image {exc}", file=sys.stderr)
        return 2
    try:
        model, checkpoint = model_from_checkpoint(args.checkpoint, device=args.device)
        f_noise = backbone_f_noise(model)
    except CheckpointError as exc:  # the message names the file
        print(f"error: --checkpoint {exc}", file=sys.stderr)
        return 2
    except (ValueError, KeyError) as exc:
        print(f"error: --checkpoint {args.checkpoint}: {exc}", file=sys.stderr)
        return 2
    if args.min_size is not None:
        model.transform.min_size = (args.min_size,)
        model.transform.max_size = max(model.transform.max_size, args.min_size)
    if args.max_size is not None:
        model.transform.max_size = args.max_size
    std, note = _sigma_shown(args.f_noise_std, f_noise, checkpoint)
    _check_levels(parser, model, args.f_noise_levels)
    picture = fnoise_perturbation(
        model, image, std=std, mode=args.f_noise_mode, levels=args.f_noise_levels, seed=args.seed, note=note
    )
    save_figure(plot_fnoise(picture), args.out)
    _print_ratios(picture)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
