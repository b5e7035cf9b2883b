"""Callbacks around the training loop: everything but the step itself.

A hook may act before and after each iteration and at the end of each epoch; :func:`default_hooks`
assembles them, in an order explained there. Hooks read the run (model, state, logger, config) and
write only what they own: the F-Noise hooks set the module's scale and recording, the writers write,
the evaluator fills the epoch record, the checkpointer saves.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .. import distributed as dist_utils
from ..evaluation.coco import format_metrics_table
from ..fnoise import FNoise, FNoiseSchedule
from .state import format_eta, format_losses, peak_memory_mb

if TYPE_CHECKING:
    from .run import Run

__all__ = [
    "Hook",
    "StepContext",
    "FNoiseScheduleHook",
    "FNoiseMonitor",
    "IterationMetrics",
    "ProgressPrinter",
    "FNoisePictures",
    "Evaluator",
    "EpochMetrics",
    "Checkpointer",
    "default_hooks",
]


@dataclass
class StepContext:
    """One iteration as the hooks see it.

    ``iteration`` and ``epoch_iteration`` are the indices of this iteration (the run's state has moved
    past it by ``after_step``). Hooks add to ``record`` (the metrics.jsonl iteration record, written when
    ``logged``) and ``scalars`` (TensorBoard, every iteration). ``stack`` closes after the last
    ``after_step``, and on an exception: a hook enters per-iteration context managers there.
    """

    iteration: int
    epoch: int
    epoch_iteration: int
    iters_in_epoch: int
    data_time: float
    logged: bool
    stack: contextlib.ExitStack
    output: Any = None
    time: float = 0.0
    record: dict[str, Any] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)


class Hook:
    """Base class: every method does nothing."""

    def before_epoch(self, run: Run) -> None:
        """At the start (or resumption) of an epoch's training."""

    def before_step(self, run: Run, step: StepContext) -> None:
        """Before the iteration's forward pass."""

    def after_step(self, run: Run, step: StepContext) -> None:
        """After the update; ``step.output`` holds the iteration's losses."""

    def after_epoch(self, run: Run, record: dict[str, Any]) -> None:
        """After the epoch's training; ``record`` becomes its metrics.jsonl epoch record."""


def sigma_in_force(f_noise: FNoise) -> float | dict[str, float]:
    """F-Noise's sigma this iteration: a number, or ``{level: sigma}`` with per-level sigmas."""
    if f_noise.level_std:
        return {level: f_noise.std_for(level) for level in f_noise.level_std}
    return f_noise.std * f_noise.scale


class FNoiseScheduleHook(Hook):
    """Sets F-Noise's sigma multiplier for each iteration from the schedule (a function of the
    iteration, so it is exact after a resume)."""

    def __init__(self, schedule: FNoiseSchedule) -> None:
        self.schedule = schedule

    def before_step(self, run: Run, step: StepContext) -> None:
        f_noise = run.f_noise
        if f_noise is not None:
            f_noise.scale = self.schedule(step.iteration)


class FNoiseMonitor(Hook):
    """Records F-Noise's input and perturbation on logged iterations; logs the noise-to-signal ratio per
    level (averaged over processes, summed into the epoch's means) and the sigma in force."""

    def before_step(self, run: Run, step: StepContext) -> None:
        f_noise = run.f_noise
        if f_noise is not None and step.logged:
            step.stack.enter_context(f_noise.recording())

    def after_step(self, run: Run, step: StepContext) -> None:
        f_noise = run.f_noise
        if f_noise is None:
            return
        sigma = sigma_in_force(f_noise)
        step.record["f_noise_std"] = sigma
        if isinstance(sigma, dict):
            step.scalars.update({f"f_noise_std/{level}": value for level, value in sigma.items()})
        else:
            step.scalars["f_noise_std"] = sigma
        ratios = f_noise.noise_to_signal() if f_noise.record else {}
        if ratios:
            totals = dist_utils.all_reduce_sum(ratios, run.device)
            run.state.add_nsr({k: v / dist_utils.get_world_size() for k, v in totals.items()})


class IterationMetrics(Hook):
    """TensorBoard scalars every iteration; a metrics.jsonl ``"iter"`` record on logged iterations."""

    def after_step(self, run: Run, step: StepContext) -> None:
        losses, lr = step.output.losses, step.output.lr
        run.logger.scalars({**losses, "lr": lr, **step.scalars}, step.iteration, prefix="train/")
        if step.logged:
            record = {"epoch": step.epoch, "iteration": step.iteration, "lr": lr, **losses}
            record.update(step.record, time=step.time, data_time=step.data_time)
            run.logger.iteration(record)


class ProgressPrinter(Hook):
    """A console line per logged iteration (ETA, losses, times, peak memory) and the epoch's total time."""

    def before_epoch(self, run: Run) -> None:
        self.start = time.perf_counter()
        self.done_at_start = run.state.epoch_iteration

    def after_step(self, run: Run, step: StepContext) -> None:
        if not (step.logged and dist_utils.is_main_process()):
            return
        done, total = step.epoch_iteration + 1, step.iters_in_epoch
        eta = (time.perf_counter() - self.start) / (done - self.done_at_start) * (total - done)
        memory_name, memory = peak_memory_mb(run.device)
        losses = format_losses(step.output.losses)
        print(
            f"Epoch: [{step.epoch}]  [{done:>{len(str(total))}}/{total}]  eta: {format_eta(eta)}  "
            f"lr: {step.output.lr:.6f}  {losses}  time: {step.time:.4f}  data: {step.data_time:.4f}  "
            f"{memory_name}: {memory:.0f} MB",
            flush=True,
        )

    def after_epoch(self, run: Run, record: dict[str, Any]) -> None:
        done = run.iters_per_epoch - getattr(self, "done_at_start", run.iters_per_epoch)
        if dist_utils.is_main_process() and done > 0:
            total = record["train_time"]
            print(f"Epoch: [{record['epoch']}] Total time: {format_eta(total)} ({total / done:.4f} s / it)")


class FNoisePictures(Hook):
    """Every ``every`` iterations, pictures of the perturbation (rank 0), leaving every RNG as it was."""

    def __init__(self, every: int) -> None:
        self.every = every

    def after_step(self, run: Run, step: StepContext) -> None:
        if (step.iteration + 1) % self.every or not dist_utils.is_main_process():
            return
        from ..visualization import log_fnoise_pictures  # matplotlib only when pictures are asked for

        generator = run.f_noise_generator
        generator_state = generator.get_state() if generator is not None else None
        devices = [run.device] if run.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            images = list(step.output.images[:2])
            log_fnoise_pictures(run.model, images, run.output_dir, run.logger.writer, step.iteration)
        if generator is not None:
            generator.set_state(generator_state)
        run.model.train()


class Evaluator(Hook):
    """Validation losses and COCO AP every ``every`` epochs and after the last; tracks the best segm AP.

    The trained epoch is saved *before* evaluating (with the epoch record marked pending), so a crash or
    a stop signal during evaluation loses no training; the resumed run evaluates that epoch first.
    """

    def __init__(self, every: int, epochs: int) -> None:
        self.every = every
        self.epochs = epochs

    def after_epoch(self, run: Run, record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        if run.val_loader is None or ((epoch + 1) % self.every and epoch + 1 != self.epochs):
            return
        run.save(pending_record=record)
        start = time.perf_counter()
        result = run.evaluate()
        record["eval_time"] = time.perf_counter() - start
        record["val"] = result["val"]
        if result["train_clean"] is not None:
            record["train_clean"] = result["train_clean"]
        metrics = result["metrics"]
        if dist_utils.is_main_process():
            record.update(
                bbox=metrics["bbox"],
                segm=metrics["segm"],
                per_category=metrics["per_category"],
                val_images_evaluated=metrics["num_images"],
            )
            print("Validation losses: " + format_losses(record["val"]))
            if result["train_clean"] is not None:
                print("Training losses, F-Noise off: " + format_losses(result["train_clean"]))
            print(format_metrics_table(metrics), flush=True)
        segm_ap = dist_utils.all_gather_objects(metrics["segm"]["AP"] if metrics else None)[0]
        if run.best_metric is None or (segm_ap is not None and segm_ap > run.best_metric):
            run.best_metric, run.best_epoch = segm_ap, epoch
            record["is_best"] = True


class EpochMetrics(Hook):
    """Appends the epoch record to metrics.jsonl (and its numbers to TensorBoard)."""

    def after_epoch(self, run: Run, record: dict[str, Any]) -> None:
        run.logger.epoch({k: v for k, v in record.items() if k != "is_best"})


class Checkpointer(Hook):
    """``last.pth`` every ``every`` iterations (0: never) and at the end of every epoch; ``best.pth`` (the
    model only) when the epoch's segm AP is the best so far. Writes are atomic: a kill at any moment
    leaves the previous file or the new one."""

    def __init__(self, every: int = 0) -> None:
        self.every = every

    def after_step(self, run: Run, step: StepContext) -> None:
        mid_epoch = run.state.epoch_iteration < run.iters_per_epoch  # the epoch's end saves anyway
        if self.every and (step.iteration + 1) % self.every == 0 and mid_epoch:
            run.save()

    def after_epoch(self, run: Run, record: dict[str, Any]) -> None:
        run.save(best=bool(record.get("is_best")))


def default_hooks(run: Run) -> list[Hook]:
    """The hooks of a training run, in the order they run.

    Before a step, the F-Noise schedule sets sigma before the monitor starts recording. After a step,
    the monitor adds its numbers to the step's record before the metrics writer writes it and the
    printer shows it; pictures come next (they must see the update), and the periodic checkpoint last,
    so it holds everything the iteration logged. After an epoch, the printer reports the training time,
    the evaluator saves and evaluates, the epoch record is written, and then the final save (which also
    clears the pending mark) makes the epoch complete on disk.
    """
    config = run.config
    hooks: list[Hook] = []
    if run.f_noise_schedule is not None:
        hooks.append(FNoiseScheduleHook(run.f_noise_schedule))
    hooks += [FNoiseMonitor(), IterationMetrics(), ProgressPrinter()]
    if config.run.visualize_every:
        hooks.append(FNoisePictures(config.run.visualize_every))
    hooks += [
        Evaluator(config.run.eval_every, config.optim.epochs),
        EpochMetrics(),
        Checkpointer(config.run.checkpoint_every),
    ]
    return hooks
