"""Atomic file writing: a crash leaves the old file or the new one, never half of one.

A write that fails (disk full, no permission, ...) raises :class:`AtomicWriteError`, whose message is one
line naming the file that was to be written, and leaves no temporary file behind.
"""

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["AtomicWriteError", "atomic_path", "write_bytes_atomic", "write_text_atomic"]

PathLike = str | os.PathLike

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class AtomicWriteError(OSError):
    """Writing a file failed. ``str()`` is one line: ``"<file>: cannot write (disk full: ...)"``.

    An ``OSError``, so handlers of ``OSError`` keep working; ``errno`` is the original error's, ``filename``
    the file that was to be written (not the temporary file), ``strerror`` the text after the file name.
    """

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind a failed write: ``exc`` itself, or what a ``RuntimeError`` was raised while
    handling (``torch.save`` reports a failed ``write`` as ``RuntimeError: ... unexpected pos ...``)."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, RuntimeError) and isinstance(exc.__context__, OSError):
        return exc.__context__
    return None


def _write_error(path: Path, exc: OSError) -> AtomicWriteError:
    reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    if exc.errno in _DISK_FULL:
        reason = f"disk full: {reason}"
    return AtomicWriteError(exc.errno, f"cannot write ({reason})", str(path))


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yields a fresh temporary path beside ``path`` for the caller to write.

    When the block ends normally the temporary file replaces ``path`` (``os.replace``: same folder, so
    same file system, so atomic) with the permissions a plainly created file would have (``0o666`` less
    the umask; ``mkstemp`` alone makes ``0o600``); when it raises, the temporary file is removed and
    ``path`` is untouched.

    Raises:
        AtomicWriteError: creating, writing or renaming the file failed with an ``OSError`` (also when
            the block's ``RuntimeError`` comes from one, as ``torch.save``'s does on a full disk).
    """
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        cause = _os_error(exc)
        if cause is None or isinstance(exc, AtomicWriteError):
            raise
        raise _write_error(path, cause) from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(data: bytes, path: PathLike) -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_path` for errors)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(text: str, path: PathLike) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path` for errors)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
