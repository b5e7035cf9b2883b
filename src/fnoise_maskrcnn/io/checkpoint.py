"""Checkpoints: building the dict, atomic writing, and safe loading with one-line refusals.

A checkpoint is a plain dict (built by :func:`make_checkpoint`) that loads with
``torch.load(path, weights_only=True)``::

    {
        "format": "fnoise_maskrcnn", "version": 1,
        "model": state_dict,              # keys identical to torchvision's MaskRCNN
        "model_config": {...},            # what fnoise_maskrcnn.models.build_model needs
        "categories": [{"id": int, "name": str}, ...],   # label i + 1 <-> categories[i]
        # training checkpoints add: "optimizer", "lr_scheduler", "scaler", "epoch", "iteration",
        # "rng", "args", "best_metric"
    }

This module does not import the model code (``models`` imports it to read weights files); rebuilding a
model from a checkpoint is :func:`fnoise_maskrcnn.io.model_io.model_from_checkpoint`.

Nothing here ever unpickles code: files are read with ``weights_only=True`` only, and a file that needs
more is refused with our own one-line message naming the file and what it holds (never torch's text,
which suggests unsafe loading).
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "make_checkpoint",
    "check_consistency",
    "save_checkpoint",
    "load_checkpoint",
    "load_state_dict_file",
]

CHECKPOINT_FORMAT = "fnoise_maskrcnn"
CHECKPOINT_VERSION = 1

PathLike = str | os.PathLike

_REQUIRED_KEYS = ("model", "model_config", "categories")
#: The box and mask predictors' output layers: their first dimension is a multiple of num_classes.
_PREDICTOR_ROWS = {
    "roi_heads.box_predictor.cls_score.weight": 1,
    "roi_heads.box_predictor.bbox_pred.weight": 4,
    "roi_heads.mask_predictor.mask_fcn_logits.weight": 1,
}
_ZIP_MAGIC = b"PK\x03\x04"
_NEVER_UNPICKLES = "this package never unpickles code (a checkpoint holds only tensors and plain data)"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, unsafe or not of the expected form (one-line message)."""


def make_checkpoint(
    model_state: Mapping[str, torch.Tensor],
    model_config: Mapping[str, Any],
    categories: Sequence[Mapping[str, Any]],
    **training_state: Any,
) -> dict[str, Any]:
    """The package's checkpoint dict: the one builder for training, tests and benchmarks.

    Args:
        model_state: the model's ``state_dict()`` (stored as it is).
        model_config: the model's ``build_config``.
        categories: ``[{"id", "name", ...}]`` in label order; stored as ``{"id": int, "name": str}``.
        training_state: more entries (``optimizer``, ``epoch``, ``rng`` ...), stored under their names.

    Raises:
        ValueError: a ``training_state`` name that is one of the fixed entries, or a model whose number
            of classes does not match the categories (see :func:`check_consistency`).
    """
    fixed = {"format", "version", *_REQUIRED_KEYS}
    clash = sorted(fixed & training_state.keys())
    if clash:
        raise ValueError(f"make_checkpoint: {', '.join(clash)} cannot be given as training state")
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model_state,
        "model_config": dict(model_config),
        "categories": [{"id": int(c["id"]), "name": str(c["name"])} for c in categories],
        **training_state,
    }
    problem = check_consistency(checkpoint)
    if problem:
        raise ValueError(f"make_checkpoint: {problem}")
    return checkpoint


def check_consistency(checkpoint: Mapping[str, Any]) -> str | None:
    """What contradicts itself in a checkpoint, or ``None``.

    Checks, where the entries are present: ``model_config["num_classes"]`` is the number of categories
    plus one (the background), and the box and mask predictors' weights have ``num_classes`` rows.
    """
    config = checkpoint.get("model_config")
    categories = checkpoint.get("categories")
    state = checkpoint.get("model")
    num_classes = config.get("num_classes") if isinstance(config, Mapping) else None
    if num_classes is not None and not (isinstance(num_classes, int) and num_classes >= 2):
        return f"model_config num_classes is {num_classes!r}, expected an integer >= 2"
    if num_classes is not None and isinstance(categories, list) and categories:
        if len(categories) + 1 != num_classes:
            return (
                f"model_config says num_classes {num_classes} (background included) but the checkpoint "
                f"lists {len(categories)} categories (expected {num_classes - 1})"
            )
    if isinstance(state, Mapping):
        classes = num_classes if num_classes is not None else (len(categories) + 1 if categories else None)
        for key, per_class in _PREDICTOR_ROWS.items():
            weight = state.get(key)
            if classes is None or not isinstance(weight, torch.Tensor) or weight.dim() == 0:
                continue
            if weight.shape[0] != per_class * classes:
                return (
                    f"the weights' {key} has {weight.shape[0] // per_class} classes, "
                    f"but the model_config and categories say {classes} (background included)"
                )
    return None


def save_checkpoint(checkpoint: Mapping[str, Any], path: PathLike) -> None:
    """Writes ``checkpoint`` to ``path`` atomically: a crash leaves the old file or the new one, never half
    of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(dict(checkpoint), f)
        f.flush()
        os.fsync(f.fileno())


def _pickle_streams(path: Path) -> Iterator[bytes]:
    """The pickle data of a file: ``data.pkl`` of a ``torch.save`` zip archive, or the file itself."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("data.pkl"):
                    yield archive.read(name)
        return
    with open(path, "rb") as f:
        yield f.read(64 * 1024 * 1024)  # legacy files: the pickles come first; tensor bytes follow


def _pickled_globals(data: bytes) -> tuple[list[str], str | None]:
    """The ``module.name`` globals a pickle stream refers to, and an opcode problem (or ``None``).

    Reads the opcodes only (``pickletools``); nothing is unpickled. Several pickles in a row (the legacy
    ``torch.save`` layout) are read in turn.
    """
    found: list[str] = []
    strings: list[str] = []
    position = 0
    while position < len(data):
        try:
            for opcode, arg, pos in pickletools.genops(data[position:]):
                if opcode.name == "GLOBAL" and isinstance(arg, str):
                    found.append(arg.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str) and "UNICODE" in opcode.name:
                    strings.append(arg)
                if opcode.name == "STOP":
                    position += pos + 1
                    break
            else:
                break
        except ValueError as exc:
            if found or position:
                break  # trailing bytes after the pickles (legacy tensor data)
            return found, _first_line(exc)
    return found, None


def _allowed_globals() -> set[str]:
    """The globals ``torch.load(weights_only=True)`` accepts, as ``module.name`` strings."""
    allowed: set[str] = set()
    try:  # private in torch; without it, every torch.* and collections.* global counts as allowed
        from torch import _weights_only_unpickler

        allowed.update(_weights_only_unpickler._get_allowed_globals())
    except Exception:  # noqa: BLE001 - any failure only makes the message less specific
        pass
    for entry in torch.serialization.get_safe_globals():
        obj = entry[0] if isinstance(entry, tuple) else entry
        allowed.add(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}")
    return allowed


def _printable(name: str) -> str:
    """A name from a file, safe to print on one line: no escape codes, no line breaks, at most 80 chars."""
    cleaned = re.sub(r"[^\w.<>:-]", "?", name)
    return cleaned if len(cleaned) <= 80 else cleaned[:77] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refusal(path: Path) -> str:
    """Our one-line reason why ``torch.load(weights_only=True)`` refused ``path``."""
    try:
        streams = list(_pickle_streams(path))
    except (OSError, zipfile.BadZipFile, RuntimeError):
        streams = []
    if not streams:
        return f"{path}: not a PyTorch checkpoint (no pickled data in it)"
    allowed = _allowed_globals()
    for data in streams:
        names, problem = _pickled_globals(data)
        if problem is not None and not names:
            return f"{path}: not a PyTorch checkpoint (neither a torch.save archive nor a pickle)"
        for name in names:
            known = name in allowed or (not allowed and name.split(".")[0] in ("torch", "collections"))
            if not known:
                found = _printable(name)
                return f"{path}: contains a pickled Python object ({found}), refused; {_NEVER_UNPICKLES}"
    return (
        f"{path}: a pickle that safe loading cannot read (not written by torch.save?), refused; "
        f"{_NEVER_UNPICKLES}"
    )


def _torch_load(path: PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with our own one-line errors."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or _first_line(exc)})") from None
    if not head:
        raise CheckpointError(f"{path}: is empty (0 bytes), not a checkpoint")
    try:
        with warnings.catch_warnings():
            # torch warns (two lines) about pickles not written by torch.save before it refuses them
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(_refusal(path)) from None
    except EOFError:
        raise CheckpointError(f"{path}: ends too early (a truncated checkpoint?)") from None
    except MemoryError:
        raise CheckpointError(f"{path}: out of memory while loading the checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - torch raises several types for damaged files
        if head == _ZIP_MAGIC:
            raise CheckpointError(
                f"{path}: a damaged or truncated checkpoint archive ({type(exc).__name__})"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__})") from None


def _check_checkpoint(checkpoint: Any, path: PathLike) -> dict[str, Any]:
    """``checkpoint`` if it is one of ours, complete and consistent; else a :class:`CheckpointError`."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not an fnoise_maskrcnn checkpoint (no 'format': '{CHECKPOINT_FORMAT}')"
        )
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {checkpoint.get('version')!r} is not supported "
            f"(this package reads version {CHECKPOINT_VERSION})"
        )
    for key in _REQUIRED_KEYS:
        if key not in checkpoint:
            raise CheckpointError(f"{path}: checkpoint has no '{key}' entry")
    problem = check_consistency(checkpoint)
    if problem:
        raise CheckpointError(f"{path}: contradicts itself: {problem}")
    return checkpoint


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """Loads one of our checkpoints (``weights_only=True``) and checks its form and consistency.

    Raises:
        CheckpointError: the file is missing, a folder, empty, truncated or corrupt, needs unsafe
            unpickling, is not an fnoise_maskrcnn checkpoint, or contradicts itself (one line naming it).
    """
    return _check_checkpoint(_torch_load(path), path)


def load_state_dict_file(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads model weights from a local file (read once).

    Accepts one of our checkpoints, a plain ``state_dict`` (e.g. torchvision's published weights), or
    a dict holding a state_dict under ``"model"`` (torchvision references' checkpoints, as long as they
    load with ``weights_only=True``).

    Returns:
        ``(state_dict, model_config)``; ``model_config`` is empty unless the file is our checkpoint.
    """
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        checkpoint = _check_checkpoint(obj, path)
        return checkpoint["model"], dict(checkpoint["model_config"])
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state_dict (expected a dict of tensors)")
    return obj, {}
