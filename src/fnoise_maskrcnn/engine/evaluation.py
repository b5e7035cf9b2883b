"""Validation: losses in a side-effect-free training-mode pass, and COCO AP gathered across processes."""

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from .. import distributed as dist_utils
from ..evaluation.coco import evaluate_coco, predictions_to_coco_results
from ..fnoise import FNoise
from ..inference import predict_batch
from .state import LOSS_NAMES, amp_dtype, autocast, to_device, unwrap

__all__ = ["evaluate_losses", "evaluate_ap"]

#: Called before each validation batch; raises (e.g. ``TrainingInterrupted``) to abandon the evaluation.
StopCheck = Callable[[], None]


def _no_stop() -> None:
    return None


@contextlib.contextmanager
def _validation_loss_mode(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Training-mode forward (so the model returns losses) without side effects on training.

    BatchNorm layers use their running statistics and do not update them, F-Noise is off, and the
    RPN/ROI samplers draw from a fixed-seed stream that leaves the training stream untouched.
    """
    was_training = model.training
    model.train()
    for module in model.modules():
        if isinstance(module, (_BatchNorm, FNoise)):
            module.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            yield
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_losses(
    model: nn.Module,
    data_loader: DataLoader,
    device: torch.device,
    amp: bool = False,
    check_stop: StopCheck = _no_stop,
) -> dict[str, float]:
    """Mean validation losses (total and the five components), averaged over all processes' images.

    Uses the unwrapped model (no DDP); see :func:`_validation_loss_mode` for what is switched off.
    ``check_stop`` runs before every batch, so a stop signal ends the evaluation within one batch.
    """
    model = unwrap(model)
    sums: dict[str, float] = {k: 0.0 for k in ("loss", *LOSS_NAMES)}
    batches = 0
    with _validation_loss_mode(model, device):
        for images, targets in data_loader:
            check_stop()
            images, targets = to_device(images, targets, device)
            with autocast(device, amp, model):
                loss_dict = model(images, targets)
            for name in LOSS_NAMES:
                sums[name] += float(loss_dict[name])
            sums["loss"] += float(sum(loss_dict.values()))
            batches += 1
    sums["batches"] = float(batches)
    totals = dist_utils.all_reduce_sum(sums, device)
    count = max(totals.pop("batches"), 1.0)
    return {k: v / count for k, v in totals.items()}


@torch.no_grad()
def evaluate_ap(
    model: nn.Module,
    data_loader: DataLoader,
    device: torch.device,
    categories: Sequence[Mapping[str, Any]],
    coco_gt: Any,
    amp: bool = False,
    check_stop: StopCheck = _no_stop,
) -> dict[str, Any] | None:
    """COCO bbox and segm AP of the model on ``data_loader``'s images, gathered across processes.

    Returns :func:`fnoise_maskrcnn.evaluation.coco.evaluate_coco`'s dict, plus ``num_images`` (images
    predicted), on rank 0 and None elsewhere. The detections are the model's, computed by
    :func:`fnoise_maskrcnn.inference.predict_batch` (masks pasted one at a time as ``bool``, so a large
    image with many detections costs ``N * H * W`` bytes, not torchvision's ``8 * N * H * W``). Images a
    ``DistributedSampler`` repeated to even out the shards are counted once. ``check_stop`` runs before
    every batch.
    """
    model = unwrap(model)
    per_image: dict[int, list[dict[str, Any]]] = {}
    for images, targets in data_loader:
        check_stop()
        outputs = predict_batch(model, list(images), device=device, autocast_dtype=amp_dtype(device, amp))
        for output, target in zip(outputs, targets):
            image_id = int(target["image_id"])
            per_image[image_id] = predictions_to_coco_results([output], [image_id], categories)
    gathered = dist_utils.all_gather_objects(per_image)
    if not dist_utils.is_main_process():
        return None
    merged: dict[int, list[dict[str, Any]]] = {}
    for part in gathered:
        merged.update(part)
    results = [entry for image_id in sorted(merged) for entry in merged[image_id]]
    metrics = evaluate_coco(coco_gt, results, cat_ids=[int(c["id"]) for c in categories])
    metrics["num_images"] = len(merged)
    return metrics
