"""One training iteration: data -> forward -> reduce -> finite check -> backward/AMP/clip -> step.

Everything else that happens around an iteration (logging, F-Noise monitoring, pictures, checkpoints)
is a hook (:mod:`fnoise_maskrcnn.engine.hooks`), in the spirit of detectron2's ``SimpleTrainer.run_step``.
"""

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .. import distributed as dist_utils
from .state import LOSS_NAMES, NonFiniteLossError, TrainState, autocast, to_device

__all__ = ["StepOutput", "Trainable", "train_step"]


class Trainable(Protocol):
    """What :func:`train_step` needs of a run (see :class:`fnoise_maskrcnn.engine.run.Run`)."""

    ddp_model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    device: torch.device
    state: TrainState
    amp: bool
    clip_grad: float


@dataclass
class StepOutput:
    """What one iteration produced.

    Attributes:
        losses: ``{"loss", "loss_classifier", ...}`` averaged over processes (floats).
        lr: the learning rate the update used.
        stop_requested: a stop signal had arrived on some process by the time losses were reduced.
        images: the batch's images on the device (``float [3, H, W]`` each), for pictures.
    """

    losses: dict[str, float]
    lr: float
    stop_requested: bool
    images: list[Tensor]


def train_step(run: Trainable, batch: tuple[Any, Any], stop_flag: bool) -> StepOutput:
    """Trains on one batch ``(images, targets)``; ``stop_flag``: this process received a stop signal.

    Raises:
        NonFiniteLossError: the reduced loss is not finite; nothing was updated.
    """
    images, targets = to_device(*batch, run.device)
    with autocast(run.device, run.amp, run.ddp_model):
        loss_dict = run.ddp_model(images, targets)
    losses = sum(loss_dict.values())
    local = dict(zip(LOSS_NAMES, torch.stack([loss_dict[k].detach().float() for k in LOSS_NAMES]).tolist()))
    local.update(loss=float(losses.detach()), stop=float(stop_flag))
    reduced = dist_utils.all_reduce_sum(local, run.device)
    stop_requested = reduced.pop("stop") > 0
    world_size = dist_utils.get_world_size()
    values = {"loss": reduced["loss"] / world_size, **{k: reduced[k] / world_size for k in LOSS_NAMES}}
    if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteLossError(run.state.iteration, run.state.epoch, values)

    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(losses).backward()
        if run.clip_grad > 0:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.ddp_model.parameters(), run.clip_grad)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        losses.backward()
        if run.clip_grad > 0:
            nn.utils.clip_grad_norm_(run.ddp_model.parameters(), run.clip_grad)
        run.optimizer.step()
    run.lr_scheduler.step()
    return StepOutput(values, lr, stop_requested, images)
