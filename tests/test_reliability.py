"""Nothing lost or overwritten: the run lock, saving before evaluation, file modes, stale temporaries."""

from __future__ import annotations

import errno
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _training import data_flags
from fnoise_maskrcnn import train
from fnoise_maskrcnn.engine.run import Run, lock_output_dir
from fnoise_maskrcnn.io.atomic import AtomicWriteError, atomic_path, write_bytes_atomic, write_text_atomic
from fnoise_maskrcnn.io.run_lock import RunLock

TINY = [
    "--model",
    "mobilenet_v3",
    "--min-size",
    "96",
    "--max-size",
    "96",
    "--max-images",
    "2",
    "-b",
    "2",
    "--max-val-images",
    "2",
    "--epochs",
    "1",
    "--warmup-iters",
    "0",
    "--workers",
    "0",
    "--no-amp",
    "--model-kwarg",
    "box_batch_size_per_image=32",
    "--model-kwarg",
    "rpn_post_nms_top_n_train=100",
]


def test_second_training_in_the_same_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):
        assert train.main(["--data-path", str(tmp_path / "nowhere"), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"PID {os.getpid()}" in err and "in use by another training" in err


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    code = (
        "import sys, time; from fnoise_maskrcnn.io.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=f"PID {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(tmp_path).acquire()  # the dead holder's lock is free
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    lock.release()


def test_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    assert train.main(["--data-path", str(tmp_path), "--output-dir", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"error: --output-dir {path}: cannot be used as a run directory") and "\n" not in err
    )


def test_stale_temporaries_are_removed_at_start(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.pth.k2j4.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = out / "notes.txt"
    keep.write_text("mine")
    lock = lock_output_dir(out)
    lock.release()
    assert not stale.exists() and keep.exists()
    assert "left by an interrupted write" in capsys.readouterr().out


def test_atomic_files_get_the_umask_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        write_text_atomic("{}", tmp_path / "a.json")
        os.umask(0o077)
        write_text_atomic("{}", tmp_path / "b.json")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_during_an_atomic_write_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_text("old")
    monkeypatch.setattr(Path, "write_text", _no_space)
    with pytest.raises(AtomicWriteError) as caught:
        write_text_atomic("new", target)
    assert str(caught.value) == f"{target}: cannot write (disk full: No space left on device)"
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]


def test_disk_full_inside_torch_save_names_the_file(tmp_path):
    """torch.save turns a failed write into RuntimeError("... unexpected pos ..."): still "disk full"."""

    class FillsUp(io.RawIOBase):
        def __init__(self, file):
            self.file, self.written = file, 0

        def writable(self):
            return True

        def write(self, data):
            if self.written + len(data) > 4096:
                _no_space()
            self.written += len(data)
            return self.file.write(data)

    target = tmp_path / "last.pth"
    with pytest.raises(AtomicWriteError, match=rf"^{re.escape(str(target))}: cannot write \(disk full: "):
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            torch.save({"weights": torch.zeros(100_000)}, FillsUp(f))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_and_other_errors_of_atomic_writes(tmp_path):
    with pytest.raises(AtomicWriteError) as caught:
        write_bytes_atomic(b"x", tmp_path / "missing" / "a.bin")
    assert str(caught.value) == f"{tmp_path / 'missing' / 'a.bin'}: cannot write (No such file or directory)"
    with pytest.raises(ValueError, match="not about writing"):  # other errors pass through unchanged
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("not about writing")
    assert list(tmp_path.iterdir()) == []


def test_trained_epoch_is_saved_before_evaluation(synthetic_coco, tmp_path, monkeypatch):
    """A crash during evaluation loses the evaluation, not the epoch's training."""

    def crash(self):
        raise RuntimeError("killed during evaluation")

    monkeypatch.setattr(Run, "evaluate", crash)
    out = tmp_path / "run"
    started = time.time()
    with pytest.raises(RuntimeError, match="killed during evaluation"):
        train.main([*data_flags(synthetic_coco), *TINY, "--output-dir", str(out)])
    checkpoint = torch.load(out / "last.pth", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["iteration"] == 1
    assert (out / "last.pth").stat().st_mtime >= started
