"""What the training tests share: tiny model flags, data flags, metrics reading, and a hook that injects
a failure (a non-finite loss or a signal) at a chosen iteration through the engine's hooks."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from fnoise_maskrcnn.engine import Hook, StepContext

# Small heads keep a CPU iteration at about a second: the cost of Mask R-CNN on tiny images is in its heads.
#: ``torchrun --standalone --nproc_per_node=2`` with this interpreter; append the script or ``-m module``.
TORCHRUN_TWO_PROCESSES = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

TINY_MODEL = [
    "--model",
    "mobilenet_v3",
    "--min-size",
    "128",
    "--max-size",
    "160",
    "--model-kwarg",
    "box_batch_size_per_image=64",
    "--model-kwarg",
    "rpn_pre_nms_top_n_train=300",
    "--model-kwarg",
    "rpn_post_nms_top_n_train=150",
    "--model-kwarg",
    "box_detections_per_img=20",
]


def data_flags(data, val: bool = True) -> list[str]:
    flags = ["--train-ann", str(data.train_ann), "--train-images", str(data.train_images)]
    if val:
        flags += [
            "--val-ann",
            str(data.val_ann),
            "--val-images",
            str(data.val_images),
            "--max-val-images",
            "2",
        ]
    return flags


def two_image_run(data, epochs: int) -> list[str]:
    """Flags of a tiny run: the first two training images, one batch of two per epoch, no validation, no
    workers, every iteration logged."""
    flags = [*data_flags(data, val=False), *TINY_MODEL, "--max-images", "2", "-b", "2"]
    return [*flags, "--epochs", str(epochs), "--workers", "0", "--print-freq", "1"]


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


class Inject(Hook):
    """At training step ``at_step`` (counted over this process's run): ``"nan"`` makes that step's mask loss
    NaN (through a one-shot forward hook on the RoI heads), ``"sigint"`` sends SIGINT to this process."""

    def __init__(self, at_step: int, action: str) -> None:
        self.at_step, self.action, self.steps = at_step, action, 0

    def before_step(self, run, step: StepContext) -> None:
        call, self.steps = self.steps, self.steps + 1
        if call != self.at_step:
            return
        if self.action == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
            return
        handle = run.model.roi_heads.register_forward_hook(self._nan_mask_loss)
        step.stack.callback(handle.remove)

    @staticmethod
    def _nan_mask_loss(module, inputs, output):
        detections, losses = output
        return detections, {k: v * float("nan") if k == "loss_mask" else v for k, v in losses.items()}


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard events in ``log_dir``: ``{tag: [(step, value), ...]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def tensorboard_images(log_dir: Path) -> dict[str, list[int]]:
    """The steps of every image tag of the TensorBoard events in ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    return {tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]}
