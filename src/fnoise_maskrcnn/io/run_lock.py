"""One training per output directory: an exclusive lock held for the life of the run.

The lock is ``fcntl.flock`` on ``OUTPUT_DIR/.lock``, which also holds the owner's PID. The operating
system releases it when the owning process ends in any way (``kill -9`` included), so a stale lock from a
dead run is simply taken over.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["RunLock", "RunLockedError", "remove_stale_temporaries"]

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the output directory's lock."""


class RunLock:
    """Exclusive lock on a run directory; use as a context manager or call :meth:`acquire`/:meth:`release`."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Takes the lock, or raises :class:`RunLockedError` naming the PID that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent} is in use by another training (PID {owner}); "
                "wait for it to end or choose another --output-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Deletes the temporary files our atomic writes leave when killed mid-write (``.NAME.*.tmp``).

    Call it only while holding the directory's :class:`RunLock`, so that no live writer owns them.
    """
    removed = []
    for path in Path(directory).glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
