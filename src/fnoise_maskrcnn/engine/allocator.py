"""The CPU memory allocator setting for training: glibc's malloc keeps freed memory for reuse.

By default glibc serves every allocation above its mmap threshold (128 KiB, raised dynamically up to
32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` when freed. A Mask R-CNN training step
allocates and frees hundreds of such tensors (feature maps, their gradients, F-Noise's random tensors),
so every step touches fresh pages, and the kernel takes a page fault and zeroes each 4 KiB page: about
700 000 minor faults per step for ResNet-50 FPN at 512 px, batch 2. With ``mmap`` off for malloc and the
heap never trimmed, the second and later steps reuse the same memory and take almost no page faults;
the numbers computed are the same, the resident memory stays at its peak. See ``docs/training.md``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["keep_freed_memory", "ALLOCATOR_CHOICES"]

#: ``--cpu-allocator`` values: ``keep`` (:func:`keep_freed_memory`) or ``system`` (the C library's defaults).
ALLOCATOR_CHOICES = ("keep", "system")

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1


def keep_freed_memory() -> bool:
    """Sets glibc's ``M_MMAP_MAX = 0`` (no ``mmap`` per allocation; the heap grows instead) and an
    ``M_TRIM_THRESHOLD`` so high that freed memory is never returned to the system, for this process.

    Returns True when applied, False where the C library is not glibc (macOS, Windows, musl), where it
    does nothing. It cannot fail an allocation: when the heap cannot grow, glibc still falls back to
    ``mmap``. Equivalent to ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
