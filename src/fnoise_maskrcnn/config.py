"""The training configuration: one frozen object, built once from the command line and never mutated.

:class:`TrainConfig` has four parts (data, model with its F-Noise part, optimisation, run). The command
line fills it through :meth:`TrainConfig.from_flags`, which also resolves what depends on other values
(image sizes, learning rate, lr steps), so every consumer reads final values. The run directory's
``config.json`` is :meth:`TrainConfig.to_dict`, and checkpoints carry the same dict under ``"config"``.

A field whose value must not change when a run is resumed (it defines the model, the data or the
randomness) is marked with ``fixed_on_resume`` in its metadata; :func:`fixed_fields` lists them.

Each field's command-line flag is ``--`` plus its name with dashes, except the F-Noise part, whose flags
are named in :data:`F_NOISE_FLAGS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .fnoise import FNoiseConfig

__all__ = [
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "F_NOISE_FLAGS",
    "fixed_fields",
    "COCO_MIN_SIZE",
    "COCO_MAX_SIZE",
    "REFERENCE_LR",
    "REFERENCE_BATCH",
]

COCO_MIN_SIZE, COCO_MAX_SIZE = 800, 1333
#: torchvision's reference learning rate: 0.02 for 16 images per step (8 GPUs x 2), scaled linearly.
REFERENCE_LR, REFERENCE_BATCH = 0.02, 16
#: Command-line flag (argparse dest) -> field of :class:`FNoiseConfig`.
F_NOISE_FLAGS = {
    "f_noise": "enabled",
    "f_noise_std": "std",
    "f_noise_mode": "mode",
    "f_noise_dist": "distribution",
    "f_noise_levels": "levels",
    "f_noise_schedule": "schedule",
    "f_noise_std_end": "std_end",
    "f_noise_step_epochs": "step_epochs",
    "f_noise_warmup_iters": "warmup_iters",
}


def _fixed(default: Any) -> Any:
    """A field that must keep its value when the run is resumed."""
    return field(default=default, metadata={"fixed_on_resume": True})


@dataclass(frozen=True)
class DataConfig:
    """Which images, how they are augmented and batched. No paths at all: the synthetic dataset."""

    data_path: str | None = _fixed(None)
    train_ann: str | None = _fixed(None)
    train_images: str | None = _fixed(None)
    val_ann: str | None = _fixed(None)
    val_images: str | None = _fixed(None)
    categories: tuple[str, ...] | None = _fixed(None)
    max_images: int | None = _fixed(None)
    max_val_images: int | None = _fixed(None)
    synthetic_images: int = _fixed(64)
    scale_jitter: bool = _fixed(False)
    photometric: bool = _fixed(False)
    aspect_ratio_group_factor: int = _fixed(3)
    batch_size: int = _fixed(2)
    workers: int = 2
    #: Training images (the first N by id, validation transforms) whose loss is measured with F-Noise
    #: off at each evaluation: the clean training loss of the overfitting gap. 0: not measured.
    train_loss_images: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """The detector: architecture, initial weights, normalisation, sizes, MaskRCNN arguments, F-Noise."""

    model: str = _fixed("resnet50")
    weights: str | None = _fixed(None)
    weights_backbone: str | None = _fixed(None)
    norm: str | None = _fixed(None)
    anchor_sizes: tuple[int, ...] | None = _fixed(None)
    trainable_backbone_layers: int | None = _fixed(None)
    min_size: int = _fixed(COCO_MIN_SIZE)
    max_size: int = _fixed(COCO_MAX_SIZE)
    model_kwarg: tuple[tuple[str, Any], ...] = _fixed(())
    f_noise: FNoiseConfig = _fixed(FNoiseConfig())

    def build_config(self, num_classes: int) -> dict[str, Any]:
        """The dict :func:`fnoise_maskrcnn.models.build_model` takes."""
        return {
            "arch": self.model,
            "num_classes": num_classes,
            "trainable_backbone_layers": self.trainable_backbone_layers,
            "norm": self.norm,
            "anchor_sizes": list(self.anchor_sizes) if self.anchor_sizes is not None else None,
            "f_noise": self.f_noise.to_dict(),
            "model_kwargs": {**dict(self.model_kwarg), "min_size": self.min_size, "max_size": self.max_size},
        }


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule and length of training."""

    epochs: int = 26
    opt: str = _fixed("sgd")
    lr: float = REFERENCE_LR
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_scheduler: str = _fixed("multistep")
    lr_steps: tuple[int, ...] = _fixed((16, 22))
    lr_gamma: float = 0.1
    warmup_iters: int = _fixed(1000)
    clip_grad: float = 0.0
    amp: bool = False


@dataclass(frozen=True)
class RunConfig:
    """Where and how the run executes: seed, device, output, logging and checkpoint cadence."""

    recipe: str | None = None
    f_noise_preset: str | None = None
    seed: int = _fixed(0)
    device: str | None = None
    threads: int | None = None
    deterministic: bool = False
    output_dir: str | None = None
    resume: bool = False
    test_only: bool = False
    eval_every: int = 1
    print_freq: int = 20
    visualize_every: int = 0
    checkpoint_every: int = 0
    cpu_allocator: str = "keep"


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "run": RunConfig}


@dataclass(frozen=True)
class TrainConfig:
    """The whole configuration of a training run."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any], world_size: int = 1) -> TrainConfig:
        """Builds and resolves the configuration from parsed flags (``vars(argparse.Namespace)``).

        Unknown keys are ignored, so an older flat ``config.json`` reads too. Resolved here: image
        sizes (COCO's 800/1333 when not given), the learning rate (torchvision's 0.02 per 16 images,
        scaled linearly with the total batch; 1e-4 for AdamW), and the lr steps (16/26 and 22/26 of the
        epochs, as torchvision's schedule).
        """
        values = {name: _section_values(section, flags) for name, section in _SECTIONS.items()}
        model, optim, data = values["model"], values["optim"], values["data"]
        model["f_noise"] = FNoiseConfig.from_dict(
            {key: flags[flag] for flag, key in F_NOISE_FLAGS.items() if flag in flags}
        )
        min_size = model.get("min_size") or COCO_MIN_SIZE
        model["min_size"] = min_size
        model["max_size"] = model.get("max_size") or max(COCO_MAX_SIZE, min_size)
        if optim.get("lr") is None:
            base = REFERENCE_LR if optim.get("opt", "sgd") == "sgd" else 1e-4
            optim["lr"] = base * data.get("batch_size", DataConfig.batch_size) * world_size / REFERENCE_BATCH
        if not optim.get("lr_steps"):
            epochs = optim.get("epochs", OptimConfig.epochs)
            optim["lr_steps"] = (round(epochs * 16 / 26), round(epochs * 22 / 26))
        return cls(**{name: _SECTIONS[name](**section) for name, section in values.items()})

    def flags(self) -> dict[str, Any]:
        """The inverse of :meth:`from_flags`: ``{argparse dest: value}``, e.g. to use as parser defaults."""
        out: dict[str, Any] = {}
        for section in (self.data, self.model, self.optim, self.run):
            for f in fields(section):
                value = getattr(section, f.name)
                if isinstance(value, FNoiseConfig):
                    values = value.to_dict()
                    out.update({flag: values[key] for flag, key in F_NOISE_FLAGS.items()})
                else:
                    out[f.name] = _plain(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able nested values: ``{"data": {...}, "model": {..., "f_noise": {...}}, ...}``."""
        out = {name: _plain(dataclasses.asdict(getattr(self, name))) for name in _SECTIONS}
        out["model"]["f_noise"] = self.model.f_noise.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The inverse of :meth:`to_dict` (no resolution: the values are final)."""
        sections: dict[str, Any] = {}
        for name, section in _SECTIONS.items():
            raw = dict(values.get(name) or {})
            known = {f.name for f in fields(section)}
            kept = {k: _typed(v) for k, v in raw.items() if k in known}
            if name == "model" and "f_noise" in raw:
                kept["f_noise"] = FNoiseConfig.from_dict(raw["f_noise"])
            sections[name] = section(**kept)
        return cls(**sections)

    @classmethod
    def read(cls, values: Mapping[str, Any]) -> TrainConfig:
        """A saved configuration: this nested form, or the flat one of earlier versions' config.json."""
        if isinstance(values.get("model"), Mapping):
            return cls.from_dict(values)
        return cls.from_flags(_legacy_flags(values))

    def replace(self, section: str, **changes: Any) -> TrainConfig:
        """A copy with fields of one section changed (the configuration itself stays frozen)."""
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


def _legacy_flags(values: Mapping[str, Any]) -> dict[str, Any]:
    """The flags in an earlier version's flat config.json, which mixed them with resolved values: data
    files found from ``--data-path`` or generated (synthetic), and ``categories`` as the resolved
    ``[{"id", "name"}]`` list. Those are dropped, so the same command reads as the same configuration."""
    flags = dict(values)
    if flags.get("synthetic_data") or flags.get("data_path"):
        for name in ("train_ann", "train_images", "val_ann", "val_images"):
            flags[name] = None
    categories = flags.get("categories")
    if isinstance(categories, list) and categories and isinstance(categories[0], Mapping):
        flags["categories"] = None  # resolved, not the --categories selection (which is not recorded)
    return flags


def fixed_fields() -> Iterator[str]:
    """The flags (argparse dests) whose value a resumed run must keep."""
    for section in _SECTIONS.values():
        for f in fields(section):
            if not f.metadata.get("fixed_on_resume"):
                continue
            if f.name == "f_noise":
                yield from F_NOISE_FLAGS
            else:
                yield f.name


def _section_values(section: type, flags: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(section)} - {"f_noise"}
    return {name: _typed(flags[name]) for name in names if name in flags}


def _typed(value: Any) -> Any:
    """Lists (from JSON or argparse) become tuples, recursively, so the frozen config is hashable-ish."""
    if isinstance(value, list):
        return tuple(_typed(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    """Tuples back to lists, for JSON and for argparse defaults."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
