"""Small checkpoints for the inference tests, written by the tests themselves (no training).

A MobileNetV3-FPN Mask R-CNN with F-Noise at 128-160 px and random weights: BatchNorm statistics are
set from random images (otherwise every eval-mode feature map is nearly constant) and the box classifier is
re-initialised with std 0.002, so that detections have spread-out scores (with torchvision's
initialisation every score of an untrained model is close to ``1 / num_classes``), which makes
"same detections" comparisons between PyTorch and exported models meaningful.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fnoise_maskrcnn import maskrcnn_mobilenet_v3_large_fpn
from fnoise_maskrcnn.data.shapes import CATEGORIES
from fnoise_maskrcnn.io.checkpoint import make_checkpoint, save_checkpoint

MIN_SIZE, MAX_SIZE = 128, 160
TEST_CATEGORIES: list[dict[str, Any]] = [{"id": c["id"], "name": c["name"]} for c in CATEGORIES]


def _calibrate_batchnorm(body: torch.nn.Module, image_size: int, batches: int = 4) -> None:
    """Sets BatchNorm running statistics from random images, so eval-mode features are not degenerate."""
    for module in body.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    body.train()
    with torch.no_grad():
        for _ in range(batches):
            body(torch.rand(2, 3, image_size, image_size))
    body.eval()


def write_test_checkpoint(
    path: Path, *, seed: int = 0, detections_per_img: int = 20, score_thresh: float = 0.05
) -> Path:
    """Builds a random small model and saves it as one of our checkpoints; returns ``path``.

    ``detections_per_img`` and ``score_thresh`` are the model's own ``box_detections_per_img`` and
    ``box_score_thresh``.
    """
    torch.manual_seed(seed)
    model = maskrcnn_mobilenet_v3_large_fpn(
        weights_backbone=None,
        num_classes=len(TEST_CATEGORIES) + 1,
        use_f_noise=True,
        f_noise_std=0.2,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        box_detections_per_img=detections_per_img,
        box_score_thresh=score_thresh,
    )
    _calibrate_batchnorm(model.backbone.body, image_size=MIN_SIZE)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.normal_(0.0, 0.002)
    save_checkpoint(make_checkpoint(model.state_dict(), model.build_config, TEST_CATEGORIES), path)
    return path
