"""Train Mask R-CNN with or without F-Noise: ``python -m fnoise_maskrcnn.train``.

Without data flags it trains on the built-in synthetic dataset, so the command runs anywhere::

    python -m fnoise_maskrcnn.train --f-noise --epochs 1 --output-dir runs/quickstart

On COCO, or any COCO-format dataset::

    python -m fnoise_maskrcnn.train --data-path /data/coco --f-noise --epochs 26 --lr-steps 16 22
    python -m fnoise_maskrcnn.train --train-ann train.json --train-images imgs/ --val-ann val.json ...

Several processes (DDP; NCCL on GPUs, gloo on the CPU)::

    torchrun --nproc_per_node=N -m fnoise_maskrcnn.train ...

The output directory receives ``config.json``, ``metrics.jsonl``, TensorBoard events, ``last.pth``
(every epoch, and every ``--checkpoint-every`` iterations) and ``best.pth`` (the model with the best
segm AP). ``--resume`` continues the run in ``--output-dir``.
"""

import contextlib
import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from . import distributed as dist_utils
from .arguments import build_parser, parse
from .config import TrainConfig
from .data import DatasetError
from .engine import Hook, NonFiniteLossError, StopSignal, TrainingInterrupted, default_hooks
from .engine.allocator import keep_freed_memory
from .engine.loop import finish_pending_epoch, train_epochs
from .engine.run import Run, UserError, lock_output_dir, set_deterministic
from .engine.state import format_losses
from .engine.summary import config_lines, print_summary, run_facts
from .evaluation.coco import format_metrics_table
from .io.atomic import AtomicWriteError, write_text_atomic
from .io.checkpoint import CheckpointError
from .metrics_log import RunLogger, set_aside_metrics, truncate_metrics

__all__ = ["build_parser", "main"]


def _test_only(run: Run) -> int:
    if run.val_loader is None:
        raise UserError("--test-only needs validation data (--val-ann, or --data-path with a val split)")
    result = run.evaluate()
    if run.ctx.is_main:
        print("val losses: " + format_losses(result["val"]))
        if result["train_clean"] is not None:
            print("train losses, F-Noise off: " + format_losses(result["train_clean"]))
        print(format_metrics_table(result["metrics"]))
    return 0


def _train(run: Run, hooks: Sequence[Hook], pending: dict | None) -> int:
    """Runs the epochs with the hooks; a stop signal or a non-finite loss saves and exits non-zero."""
    start, out = time.perf_counter(), run.output_dir
    with StopSignal() as stop:
        run.stop = stop
        try:
            last = finish_pending_epoch(run, hooks, pending) if pending else None
            last = train_epochs(run, hooks, stop) or last
        except TrainingInterrupted as exc:
            if run.state.epoch_iteration > 0:
                run.save()
            if run.ctx.is_main:
                print(
                    f"error: {exc} at iteration {run.state.iteration} (epoch {run.state.epoch}); "
                    f"state saved to {out / 'last.pth'}; continue with --resume --output-dir {out}",
                    file=sys.stderr,
                )
            return 128 + exc.signum
        except DatasetError:  # an unreadable image mid-epoch: keep what was trained, then report it
            if run.state.epoch_iteration > 0:
                run.save()
            raise
        except NonFiniteLossError as exc:
            run.save()
            if run.ctx.is_main:
                print(
                    f"error: {exc}; the state before this iteration is in {out / 'last.pth'} "
                    "(--resume continues from it; consider a lower --lr or --clip-grad)",
                    file=sys.stderr,
                )
            return 1
    if run.ctx.is_main:
        print_summary(run, last, time.perf_counter() - start)
    return 0


def _start(run: Run, resumed: dict | None) -> None:
    """Saves the configuration (once), prints what the run is, and opens the metrics writer.

    A resumed run drops the records its interrupted session wrote after the checkpoint; a fresh run sets
    aside a ``metrics.jsonl`` left by an earlier run that has no checkpoint, rather than append to it."""
    out, config = run.output_dir, run.config
    purge = run.state.iteration if resumed is not None else None
    if run.ctx.is_main:
        write_text_atomic(json.dumps(config.to_dict(), indent=2) + "\n", out / "config.json")
        print("\n".join(config_lines(run)), flush=True)
        if resumed is not None:
            pending = resumed.get("pending_epoch_record")
            epoch = pending["epoch"] if pending else run.state.epoch
            truncate_metrics(out / "metrics.jsonl", run.state.iteration, epoch)
            print(
                f"resuming from {out / 'last.pth'}: epoch {run.state.epoch}, iteration {run.state.iteration}"
            )
        elif (stale := set_aside_metrics(out / "metrics.jsonl")) is not None:
            print(f"{out / 'metrics.jsonl'} of an earlier run with no checkpoint to resume kept as {stale}")
            purge = 0  # that run's TensorBoard events are hidden as well
    run.logger = RunLogger(out, enabled=run.ctx.is_main, purge_step=purge)
    run.logger.run(run_facts(run))


def _run(config: TrainConfig, resumed: dict | None, extra_hooks: Sequence[Hook]) -> int:
    ctx = dist_utils.init_distributed(config.run.device)
    stack = contextlib.ExitStack()
    try:
        if config.run.output_dir is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            config = config.replace("run", output_dir=str(Path("runs") / f"train-{stamp}"))
        out = Path(config.run.output_dir)
        if ctx.is_main and not config.run.test_only:
            stack.callback(lock_output_dir(out).release)
        if resumed is None and not config.run.test_only and (out / "last.pth").exists():
            raise UserError(
                f"--output-dir {out} already holds a run (last.pth); "
                "pass --resume to continue it or choose another directory"
            )
        run = Run.create(config, ctx, resumed)
        if config.run.test_only:
            return _test_only(run)
        _start(run, resumed)
        try:
            pending = resumed.get("pending_epoch_record") if resumed is not None else None
            return _train(run, [*default_hooks(run), *extra_hooks], pending)
        finally:
            run.logger.close()
    finally:
        stack.close()
        dist_utils.cleanup()


def main(argv: Sequence[str] | None = None, extra_hooks: Sequence[Hook] = ()) -> int:
    """The command; ``extra_hooks`` run after the default ones (tests inject failures through them)."""
    parsed = parse(argv, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    config = parsed.config
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    set_deterministic(config.run.deterministic)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    if config.run.cpu_allocator == "keep":
        keep_freed_memory()
    try:
        return _run(config, parsed.resumed, extra_hooks)
    except (UserError, DatasetError, CheckpointError, AtomicWriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.use_deterministic_algorithms(deterministic_before)


if __name__ == "__main__":
    sys.exit(main())
