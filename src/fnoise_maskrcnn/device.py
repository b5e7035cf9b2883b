"""Where to run a model, and whether an error is the device running out of memory.

:func:`resolve_device` is the package's one device choice (default ``"auto"``: the GPU when there is one);
predict, evaluate, serve, visualize and :func:`fnoise_maskrcnn.io.model_io.model_from_checkpoint` use it.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

__all__ = ["resolve_device", "is_out_of_memory", "processor_name"]

_DEVICE_EXAMPLES = "'auto', 'cpu', 'cuda', 'cuda:1'"


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The package's one device choice.

    Args:
        name: ``None`` or ``"auto"``: the GPU when there is one, else the CPU; otherwise a device name
            (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...) or a ``torch.device``.

    Raises:
        ValueError: not a device name, or a GPU that this machine does not have (one-line message).
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {str(name)!r} is not a device name (e.g. {_DEVICE_EXAMPLES})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(name)!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(name)!r} requested but this machine has {torch.cuda.device_count()} GPU(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(name)!r} requested but MPS is not available on this machine")
    return device


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: ``MemoryError``, CUDA's ``OutOfMemoryError``, or the CPU
    allocator's ``RuntimeError`` ("can't allocate memory")."""
    cuda_oom = getattr(torch, "OutOfMemoryError", None) or getattr(
        torch.cuda, "OutOfMemoryError", MemoryError
    )
    if isinstance(exc, (MemoryError, cuda_oom)):
        return True
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in str(exc) or "out of memory" in str(exc).lower()
    )


def processor_name(device: torch.device | str = "cpu", cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The model of the processor that ``device`` computes on: the GPU's name for a CUDA device, else the
    CPU's ``model name`` from ``cpuinfo`` (``platform.processor()`` where that file is missing).

    Runs record it because the same command and seed on two CPU models (AMX and AVX-512 kernels, say)
    agree to the init and data order but not bit for bit: their floating-point sums differ.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
