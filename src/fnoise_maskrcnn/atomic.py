"""Atomic file writing: a crash leaves the old file or the new one, never half of one."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_bytes_atomic", "write_text_atomic"]

PathLike = str | os.PathLike


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yields a fresh temporary path beside ``path`` for the caller to write.

    When the block ends normally the temporary file replaces ``path`` (``os.replace``: same folder, so
    same file system, so atomic) with the permissions a plainly created file would have (``0o666`` less
    the umask; ``mkstemp`` alone makes ``0o600``); when it raises, the temporary file is removed and
    ``path`` is untouched.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(data: bytes, path: PathLike) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(text: str, path: PathLike) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
