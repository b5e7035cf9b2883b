"""The training loops: iterations of an epoch, and epochs of a run. Plain loops; hooks do the rest."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import distributed as dist_utils
from ..data import set_epoch
from .hooks import Hook, StepContext
from .state import DataRng, StopSignal, TrainingInterrupted, skip_batches
from .step import train_step

if TYPE_CHECKING:
    from .run import Run

__all__ = ["train_one_epoch", "train_epochs", "finish_pending_epoch"]


def train_one_epoch(run: Run, hooks: Sequence[Hook], stop: StopSignal) -> None:
    """Trains over the rest of epoch ``run.state.epoch``, updating ``run.state`` in place.

    Raises:
        NonFiniteLossError: an iteration's loss is not finite; that iteration made no update.
        TrainingInterrupted: a stop signal arrived; the iteration in progress was completed, no more.
    """
    state = run.state
    run.ddp_model.train()
    iterator = iter(skip_batches(run.train_loader, state.epoch_iteration))
    end = time.perf_counter()
    while True:
        try:
            batch = run.data_rng.next(iterator)
        except StopIteration:
            break
        last = state.epoch_iteration == run.iters_per_epoch - 1
        with contextlib.ExitStack() as stack:
            step = StepContext(
                iteration=state.iteration,
                epoch=state.epoch,
                epoch_iteration=state.epoch_iteration,
                iters_in_epoch=run.iters_per_epoch,
                data_time=time.perf_counter() - end,
                logged=state.epoch_iteration % run.config.run.print_freq == 0 or last,
                stack=stack,
            )
            for hook in hooks:
                hook.before_step(run, step)
            step.output = train_step(run, batch, stop.signum is not None)
            state.add_losses(step.output.losses)
            state.iteration += 1
            state.epoch_iteration += 1
            step.time = time.perf_counter() - end
            for hook in hooks:
                hook.after_step(run, step)
        end = time.perf_counter()
        # Under DDP every process must stop at the same iteration: the flag reduced with the losses.
        # Alone, a signal that arrived during this iteration stops right after it.
        local_stop = stop.signum is not None and not dist_utils.is_distributed()
        if step.output.stop_requested or local_stop:
            raise TrainingInterrupted(stop.signum or signal.SIGTERM)


def _epoch_record(run: Run, epoch: int, train_time: float) -> dict[str, Any]:
    state = run.state
    nsr = state.mean_nsr()
    return {
        "epoch": epoch,
        "iteration": state.iteration,
        "train": state.mean_losses(),
        "val": None,
        "bbox": None,
        "segm": None,
        "f_noise_nsr": nsr if nsr is not None or not run.config.model.f_noise.enabled else {},
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_time": train_time,
    }


def finish_pending_epoch(run: Run, hooks: Sequence[Hook], record: dict[str, Any]) -> dict[str, Any]:
    """Completes an epoch whose training was saved but whose evaluation or record was not (a crash or a
    stop signal during evaluation): runs its epoch-end hooks again."""
    record = dict(record)
    for hook in hooks:
        hook.after_epoch(run, record)
    return record


def train_epochs(run: Run, hooks: Sequence[Hook], stop: StopSignal) -> dict[str, Any] | None:
    """Trains until ``config.optim.epochs``; returns the last epoch's record (None if none ran).

    Each epoch: its data stream is seeded from (seed, epoch), the iterations run, the state moves to the
    next epoch, and then the epoch-end hooks evaluate, log and save. A stop signal is honoured after the
    iteration in progress, or (during evaluation) within a validation batch.
    """
    state, last_record = run.state, None
    while state.epoch < run.config.optim.epochs:
        epoch = state.epoch
        if state.epoch_iteration == 0:
            state.start_epoch(epoch)
            run.data_rng = DataRng(run.data_seed(epoch))
        set_epoch(run.train_loader, epoch)
        for hook in hooks:
            hook.before_epoch(run)
        start = time.perf_counter()
        train_one_epoch(run, hooks, stop)
        record = _epoch_record(run, epoch, time.perf_counter() - start)
        state.start_epoch(epoch + 1)
        run.data_rng = DataRng(run.data_seed(epoch + 1))
        for hook in hooks:
            hook.after_epoch(run, record)
        last_record = record
        stopped = dist_utils.all_reduce_sum({"stop": float(stop.signum is not None)}, run.device)["stop"]
        if stopped and state.epoch < run.config.optim.epochs:
            raise TrainingInterrupted(stop.signum or signal.SIGTERM)
    return last_record
