"""Pictures of the F-Noise perturbation, computed from a model's own backbone.

For one image, :func:`fnoise_perturbation` runs the model's ``transform`` and ``backbone.body`` to get
the clean body features, then applies ``backbone.f_noise`` twice: once in training mode and once in
eval mode, with a seeded generator so the picture is reproducible. :func:`plot_fnoise` draws, for
each perturbed level and each mode: the input image, the clean feature magnitude (channel mean of
``|x|``), the perturbation (channel mean of ``|noise|``), the perturbed features (channel mean of
``|x + noise|``) and the relative noise (perturbation map divided by clean map). In eval mode the
perturbation is exactly zero, which the picture shows on the training row's colour scale.

The body runs in eval mode (BatchNorm uses its running statistics and nothing is updated), so the
clean features are the same in both rows and taking a picture never changes the model: its mode,
F-Noise settings, buffers and the global random state are left as they were.

``python -m fnoise_maskrcnn.visualize`` draws the picture of one image; the training loop calls
:func:`log_fnoise_pictures` (``train --visualize-every N``). :func:`save_figure` writes any matplotlib
figure atomically (also the study's figures).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from .distributed import unwrap
from .fnoise import F_NOISE_MODES, FNoise, _check_choice, noise_to_signal
from .io.atomic import atomic_path

__all__ = [
    "LevelPicture",
    "FNoisePicture",
    "fnoise_perturbation",
    "plot_fnoise",
    "save_figure",
    "log_fnoise_pictures",
    "backbone_f_noise",
]


@dataclass(frozen=True)
class LevelPicture:
    """One perturbed level in one mode. Maps are ``float32 [H_i, W_i]`` on the CPU, cropped to the image.

    Attributes:
        name: the level's key in the body's output (``"0"`` ... ``"3"`` for ResNet-50).
        source: the body module that produces it (``"layer1"`` ... ``"layer4"`` for ResNet-50).
        shape: the full feature map's shape ``[N, C, H_i, W_i]`` (padding included).
        clean: channel mean of ``|x|``.
        noise: channel mean of ``|y - x|`` (zero in eval mode).
        perturbed: channel mean of ``|y|``.
        relative: ``noise / clean`` (zero where ``clean`` is zero).
        noise_to_signal: ``||y - x||_2 / ||x||_2`` over the whole map (a scalar).
    """

    name: str
    source: str
    shape: tuple
    clean: Tensor
    noise: Tensor
    perturbed: Tensor
    relative: Tensor
    noise_to_signal: float


@dataclass(frozen=True)
class FNoisePicture:
    """What :func:`plot_fnoise` draws: the input as the body sees it and each level in both modes.

    Attributes:
        image: the resized input, ``float32 [3, H, W]`` in ``[0, 1]`` (normalisation undone, no padding).
        train: perturbed levels in training mode, in body order.
        eval: the same levels in eval mode.
        std, mode: the F-Noise settings used; ``std`` is the sigma in force (a schedule's scale
            included; the largest one with per-level sigmas).
        seed: the seed of the noise.
        distribution: the law of the noise (``"gaussian"`` or ``"uniform"``).
        note: a remark for the title (e.g. that the model itself has F-Noise disabled), or ``""``.
    """

    image: Tensor
    train: list[LevelPicture]
    eval: list[LevelPicture]
    std: float
    mode: str
    seed: int
    note: str = ""
    distribution: str = "gaussian"


def backbone_f_noise(model: nn.Module) -> FNoise:
    """The model's ``backbone.f_noise``; ``ValueError`` when the model has no F-Noise backbone."""
    f_noise = getattr(getattr(model, "backbone", None), "f_noise", None)
    if not isinstance(f_noise, FNoise):
        raise ValueError("the model has no F-Noise backbone (model.backbone.f_noise is not an FNoise)")
    return f_noise


@contextmanager
def _modes_preserved(model: nn.Module) -> Iterator[None]:
    """Restores every module's train/eval flag on exit (F-Noise's own settings: ``FNoise.overridden``)."""
    modes = {module: module.training for module in model.modules()}
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def _level_picture(
    name: str, source: str, clean: Tensor, perturbed: Tensor, height: int, width: int
) -> LevelPicture:
    """Channel-mean maps of one level, cropped to ``height x width``.

    ``clean`` and ``perturbed`` are ``[1, C, H_i, W_i]``.
    """
    noise = (perturbed - clean).float()
    clean = clean.float()
    clean_map = clean.abs().mean(dim=1)[0, :height, :width].cpu()
    noise_map = noise.abs().mean(dim=1)[0, :height, :width].cpu()
    perturbed_map = perturbed.float().abs().mean(dim=1)[0, :height, :width].cpu()
    tiny = torch.finfo(torch.float32).tiny
    relative = torch.where(clean_map > 0, noise_map / clean_map.clamp_min(tiny), 0.0)
    ratio = noise_to_signal(clean, noise)
    shape = tuple(clean.shape)
    return LevelPicture(name, source, shape, clean_map, noise_map, perturbed_map, relative, ratio)


@torch.no_grad()
def fnoise_perturbation(
    model: nn.Module,
    image: Tensor,
    *,
    std: float | None = None,
    mode: str | None = None,
    levels: Sequence[str] | None = None,
    seed: int = 0,
    note: str = "",
) -> FNoisePicture:
    """Computes the F-Noise perturbation of one image's body features, in training and in eval mode.

    Args:
        model: a Mask R-CNN with an :class:`~fnoise_maskrcnn.FNoiseBackboneWithFPN` (may be wrapped in
            ``DistributedDataParallel``), in either mode. It is left exactly as it was.
        image: ``float [3, H, W]`` in ``[0, 1]``, on any device (moved to the model's).
        std, mode, levels: override the model's F-Noise settings for the picture (``None``: the model's
            own; ``levels=None`` keeps the model's levels). Useful when the model has ``std == 0``.
        seed: seed of the noise generator; the same seed gives the same picture.
        note: carried into :attr:`FNoisePicture.note`.

    Returns:
        An :class:`FNoisePicture` with one :class:`LevelPicture` per perturbed level and mode.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be a [3, H, W] tensor, got shape {list(image.shape)}")
    model = unwrap(model)
    f_noise = backbone_f_noise(model)
    device = next(model.parameters()).device
    with _modes_preserved(model), f_noise.overridden(**_overrides(f_noise, std, mode, levels)):
        model.eval()
        images, _ = model.transform([image.to(device=device, dtype=torch.float32)])
        features = model.backbone.body(images.tensors)
        height, width = images.image_sizes[0]
        padded_h, padded_w = images.tensors.shape[-2:]
        perturbed_levels = [name for name in features if f_noise.levels is None or name in f_noise.levels]
        sources = {name: module for module, name in model.backbone.body.return_layers.items()}

        pictures = {}
        for training in (True, False):
            f_noise.train(training)
            f_noise.generator = torch.Generator(device=device).manual_seed(seed)
            perturbed = f_noise.perturb_features(features)
            pictures[training] = []
            for name in perturbed_levels:
                clean = features[name]
                level_h = math.ceil(height * clean.shape[-2] / padded_h)
                level_w = math.ceil(width * clean.shape[-1] / padded_w)
                pictures[training].append(
                    _level_picture(name, sources.get(name, name), clean, perturbed[name], level_h, level_w)
                )

        shown = _unnormalized(model, images.tensors[0, :, :height, :width])
        sigma = max(f_noise.std_for(level.name) for level in pictures[True]) if pictures[True] else 0.0
        return FNoisePicture(
            shown, pictures[True], pictures[False], sigma, f_noise.mode, seed, note, f_noise.distribution
        )


def _overrides(
    f_noise: FNoise, std: float | None, mode: str | None, levels: Sequence[str] | None
) -> dict[str, Any]:
    """The :meth:`FNoise.overridden` settings for a picture: no recording, the module's own generator
    and schedule scale, and the caller's ``std``/``mode``/``levels`` where given."""
    overrides: dict[str, Any] = {"record": False, "generator": f_noise.generator, "scale": f_noise.scale}
    if std is not None:
        overrides.update(std=float(std), level_std={})
    if mode is not None:
        _check_choice("mode", mode, F_NOISE_MODES)
        overrides["mode"] = mode
    if levels is not None:
        overrides["levels"] = [str(level) for level in levels]
    return overrides


def _unnormalized(model: nn.Module, image: Tensor) -> Tensor:
    """The transform's normalized ``[3, H, W]`` image back in ``[0, 1]``, float32 on the CPU."""
    mean = torch.as_tensor(model.transform.image_mean, device=image.device).view(3, 1, 1)
    scale = torch.as_tensor(model.transform.image_std, device=image.device).view(3, 1, 1)
    return (image * scale + mean).clamp(0, 1).float().cpu()


def _row_label(phase: str, level: LevelPicture) -> str:
    return f"{phase} mode\nlevel {level.name} (body.{level.source})\n[C, H, W] = {list(level.shape[1:])}"


def _maps_and_scales(
    level: LevelPicture, reference: LevelPicture
) -> tuple[tuple[Tensor, float, float, str], ...]:
    """``(map, vmin, vmax, colormap)`` for the clean, noise, perturbed and relative columns of ``level``,
    on the colour scales of ``reference`` (the training row of the same level)."""
    magnitude_min = min(reference.clean.min().item(), reference.perturbed.min().item())
    magnitude_max = max(reference.clean.max().item(), reference.perturbed.max().item())
    magnitude_max = max(magnitude_max, magnitude_min + 1e-12)
    noise_max = max(reference.noise.max().item(), 1e-12)
    relative_max = max(reference.relative.max().item(), 1e-12)
    return (
        (level.clean, magnitude_min, magnitude_max, "viridis"),
        (level.noise, 0.0, noise_max, "magma"),
        (level.perturbed, magnitude_min, magnitude_max, "viridis"),
        (level.relative, 0.0, relative_max, "magma"),
    )


def plot_fnoise(picture: FNoisePicture) -> Figure:
    """Draws the picture: one row per level and mode (training rows first), five columns.

    Columns: input image; clean ``mean_c |x|``; perturbation ``mean_c |noise|``; perturbed
    ``mean_c |x + noise|``; relative noise. Clean and perturbed share a colour scale per level (their
    joint range); perturbation and relative noise scales start at 0. The eval rows use the training
    rows' scales, so a zero perturbation is visibly zero.
    """
    rows = [("train", level) for level in picture.train] + [("eval", level) for level in picture.eval]
    columns = (
        "input image",
        "clean  mean_c|x|",
        "perturbation  mean_c|noise|",
        "perturbed  mean_c|x+noise|",
        "relative  noise / clean",
    )
    figure = Figure(figsize=(2.9 * len(columns), 2.5 * max(len(rows), 1) + 0.9), dpi=60, layout="constrained")
    header = (
        f"F-Noise σ={picture.std:g} (in force), mode={picture.mode}, {picture.distribution}, "
        f"noise seed {picture.seed}"
    )
    if picture.note:
        header += f"\n{picture.note}"
    figure.suptitle(header, fontsize=13)
    if not rows:
        figure.text(0.5, 0.5, "no level is perturbed", ha="center", va="center")
        return figure
    axes = figure.subplots(len(rows), len(columns), squeeze=False)
    train_by_name = {level.name: level for level in picture.train}
    image = picture.image.permute(1, 2, 0).numpy()
    for row, (phase, level) in enumerate(rows):
        maps = _maps_and_scales(level, train_by_name.get(level.name, level))
        ax = axes[row, 0]
        ax.imshow(image)
        ax.set_ylabel(_row_label(phase, level), fontsize=10)
        if row in (0, len(picture.train)):
            ax.set_title(columns[0], fontsize=10)
        for column, (values, vmin, vmax, cmap) in enumerate(maps, start=1):
            ax = axes[row, column]
            shown = ax.imshow(values.numpy(), vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest")
            figure.colorbar(shown, ax=ax, shrink=0.85)
            title = columns[column] if row in (0, len(picture.train)) else ""
            if column == 2:
                title = (title + "\n" if title else "") + f"max {level.noise.max().item():.3g}"
            if column == 4:
                title = (title + "\n" if title else "") + f"‖noise‖/‖x‖ = {level.noise_to_signal:.3g}"
            ax.set_title(title, fontsize=10)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    return figure


def _render(figure: Figure) -> np.ndarray:
    """The figure as ``uint8 [H, W, 3]`` RGB pixels."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(figure: Figure, path: Path) -> Path:
    """Writes ``figure`` as a PNG atomically (temporary file in the same directory, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        FigureCanvasAgg(figure).print_png(f, pil_kwargs={"optimize": True})
    return path


def log_fnoise_pictures(
    model: nn.Module,
    images: list[Tensor],
    output_dir: Path,
    writer=None,
    step: int = 0,
) -> list[Path]:
    """Writes one F-Noise picture per image (the training loop's ``--visualize-every``).

    Args:
        model: the model being trained, possibly DDP-wrapped; left exactly as it was.
        images: ``float [3, H, W]`` images in ``[0, 1]``.
        output_dir: the run directory; PNGs go to ``output_dir / "fnoise" / "step{step:07d}_image{i}.png"``.
        writer: an optional ``torch.utils.tensorboard.SummaryWriter``; each picture is added with
            ``add_image`` under ``fnoise/image{i}``, plus ``f_noise_nsr/level_{name}`` scalars (the name the
            training log uses).
        step: the global iteration, used in file names and as the TensorBoard step.

    Returns:
        The paths of the written PNGs.
    """
    paths = []
    for index, image in enumerate(images):
        picture = fnoise_perturbation(model, image, seed=step)
        figure = plot_fnoise(picture)
        path = save_figure(figure, Path(output_dir) / "fnoise" / f"step{step:07d}_image{index}.png")
        paths.append(path)
        if writer is not None:
            writer.add_image(f"fnoise/image{index}", _render(figure), step, dataformats="HWC")
            if index == 0:
                for level in picture.train:
                    writer.add_scalar(f"f_noise_nsr/level_{level.name}", level.noise_to_signal, step)
    return paths
