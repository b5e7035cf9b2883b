"""The training engine: state, one step, hooks around it, the loops, evaluation and the run they act on.

- :mod:`.state`: position and sums, lr schedule, data stream, stop signal, errors;
- :mod:`.step`: :func:`train_step`, one iteration;
- :mod:`.hooks`: logging, F-Noise monitoring and pictures, evaluation, checkpoints;
- :mod:`.loop`: :func:`train_one_epoch` and :func:`train_epochs`;
- :mod:`.evaluation`: validation losses and COCO AP;
- :mod:`.run`: :class:`Run`, everything built from a :class:`~fnoise_maskrcnn.config.TrainConfig`.
"""

from .evaluation import evaluate_ap, evaluate_losses
from .hooks import Hook, StepContext, default_hooks
from .loop import finish_pending_epoch, train_epochs, train_one_epoch
from .state import (
    LOSS_NAMES,
    DataRng,
    LrSchedule,
    NonFiniteLossError,
    StopSignal,
    TrainingInterrupted,
    TrainState,
    amp_dtype,
    amp_precision,
    autocast,
    skip_batches,
)
from .step import StepOutput, train_step

__all__ = [
    "LOSS_NAMES",
    "DataRng",
    "Hook",
    "LrSchedule",
    "NonFiniteLossError",
    "StepContext",
    "StepOutput",
    "StopSignal",
    "TrainState",
    "TrainingInterrupted",
    "amp_dtype",
    "amp_precision",
    "autocast",
    "default_hooks",
    "evaluate_ap",
    "evaluate_losses",
    "finish_pending_epoch",
    "skip_batches",
    "train_epochs",
    "train_one_epoch",
    "train_step",
]
