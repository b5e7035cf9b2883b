"""What a training run writes about itself: ``metrics.jsonl`` and TensorBoard events.

``metrics.jsonl`` has one JSON object per line (schema in README, section Training):

- ``{"type": "iter", "epoch", "iteration", "lr", "loss", "loss_classifier", ..., "time", "data_time"}``
  for each logged iteration;
- ``{"type": "epoch", "epoch", "iteration", "train": {...}, "val": {...} | null, "bbox": {...} | null,
  "segm": {...} | null, "f_noise_nsr": {level: ratio} | null, ...}`` for each epoch, with
  ``"train_clean": {...}`` (the losses on ``--train-loss-images`` training images, F-Noise off) where
  that was measured.

TensorBoard scalars use the global iteration as step throughout, so that a resumed run can purge
what the interrupted one wrote after its last checkpoint.
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from .io.atomic import write_text_atomic

__all__ = ["RunLogger", "set_aside_metrics", "truncate_metrics"]

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: Path, iteration: int, epoch: int) -> None:
    """Drops the records written after a checkpoint: iterations ``>= iteration`` and epochs ``>= epoch``.

    A resumed run calls it before appending, so the file never holds the same step twice.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("type") == "iter" and record.get("iteration", 0) >= iteration:
            continue
        if record.get("type") == "epoch" and record.get("epoch", 0) >= epoch:
            continue
        kept.append(line)
    write_text_atomic("".join(line + "\n" for line in kept), path)


def set_aside_metrics(path: Path) -> Path | None:
    """Renames a non-empty ``path`` to the first free ``<path>.1``, ``<path>.2`` ... and returns the new name.

    A run started afresh (not resumed) in a directory whose ``metrics.jsonl`` was left by a run that has no
    checkpoint to resume (killed in its first epoch, or copied without it) would otherwise append to the
    old records and hold the same steps twice. Returns None when there was nothing to set aside.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return None
    number = 1
    while path.with_name(f"{path.name}.{number}").exists():
        number += 1
    target = path.with_name(f"{path.name}.{number}")
    path.rename(target)
    return target


class RunLogger:
    """Appends records to ``output_dir/metrics.jsonl`` and mirrors their numbers to TensorBoard.

    Args:
        output_dir: the run directory.
        enabled: False on every process but rank 0: then nothing is written.
        purge_step: when resuming, the global iteration of the checkpoint; TensorBoard events at or after
            it (left by the interrupted run) are discarded.
    """

    def __init__(self, output_dir: Path, enabled: bool = True, purge_step: int | None = None) -> None:
        self.enabled = enabled
        self.writer: SummaryWriter | None = None
        self._file = None
        if enabled:
            output_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(log_dir=str(output_dir), purge_step=purge_step)
            self._file = open(output_dir / METRICS_FILE, "a", buffering=1)

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        """Writes TensorBoard scalars ``prefix + name`` at ``step`` (every iteration, not to
        metrics.jsonl)."""
        if self.writer is None:
            return
        for name, value in values.items():
            if value is not None:
                self.writer.add_scalar(prefix + name, value, step)

    def run(self, facts: dict[str, Any]) -> None:
        """Appends a ``"run"`` record: what the configuration resolved to in this session (data files,
        device, world size, iterations per epoch, image counts, categories, model_config, torch)."""
        self._write({"type": "run", **facts})

    def iteration(self, record: dict[str, Any]) -> None:
        """Appends an ``"iter"`` record to metrics.jsonl (TensorBoard is written by :meth:`scalars`)."""
        self._write({"type": "iter", **record})

    def epoch(self, record: dict[str, Any]) -> None:
        """Appends an ``"epoch"`` record and writes its numbers to TensorBoard at ``record["iteration"]``."""
        self._write({"type": "epoch", **record})
        step = record["iteration"]
        for group in ("train", "train_clean", "val", "bbox", "segm"):
            if record.get(group):
                self.scalars(record[group], step, prefix=f"epoch_{group}/")
        if record.get("f_noise_nsr"):
            self.scalars(
                {f"level_{k}": v for k, v in record["f_noise_nsr"].items()}, step, prefix="f_noise_nsr/"
            )
        if self.writer is not None:
            self.writer.flush()

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._file is not None:
            self._file.close()
            self._file = None
