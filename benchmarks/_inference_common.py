"""What the inference benchmarks share: a benchmark checkpoint and real images to run it on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from fnoise_maskrcnn import maskrcnn_resnet50_fpn
from fnoise_maskrcnn.io.checkpoint import make_checkpoint, save_checkpoint

#: The real sets (coco128/, balloon/, dsb2018_stage1test/): the folder FNOISE_MASKRCNN_DATA names, if set.
DATA_DIR = Path(os.environ["FNOISE_MASKRCNN_DATA"]) if os.environ.get("FNOISE_MASKRCNN_DATA") else None


def write_random_checkpoint(
    path: Path, num_classes: int, min_size: int, max_size: int, detections_per_img: int = 20, seed: int = 0
) -> Path:
    """A ResNet-50-FPN Mask R-CNN with F-Noise and random weights, saved as one of our checkpoints.

    BatchNorm statistics are set from a few random images, so that features are those of a working
    network rather than of an all-zero one. An untrained model fills its ``detections_per_img`` quota
    on every image, and the mask head's cost grows with it; 20 is about what a trained COCO model
    keeps above a 0.05 score on a typical image.
    """
    torch.manual_seed(seed)
    model = maskrcnn_resnet50_fpn(
        weights_backbone=None,
        num_classes=num_classes,
        use_f_noise=True,
        min_size=min_size,
        max_size=max_size,
        box_detections_per_img=detections_per_img,
    )
    calibrate_random_model(model, min_size)
    model.eval()
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, num_classes)]
    save_checkpoint(make_checkpoint(model.state_dict(), model.build_config, categories), path)
    return path


@torch.no_grad()
def calibrate_random_model(model: torch.nn.Module, image_size: int) -> None:
    """Makes a random-weight model behave like a working one: BatchNorm statistics of the body from two
    batches of random images, and a box classifier with small weights, so scores spread out."""
    body = model.backbone.body
    for module in body.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    body.train()
    for _ in range(2):
        body(torch.rand(2, 3, image_size, image_size))
    model.roi_heads.box_predictor.cls_score.weight.normal_(0.0, 0.002)


def benchmark_images(count: int) -> list[Path]:
    """``count`` real images: coco128's val images (in ``$FNOISE_MASKRCNN_DATA``), else synthetic ones."""
    ann = DATA_DIR / "coco128" / "val.json" if DATA_DIR is not None else None
    if ann is not None and ann.is_file():
        images = sorted(json.loads(ann.read_text())["images"], key=lambda img: img["id"])
        return [ann.parent / "images" / img["file_name"] for img in images[:count]]
    from fnoise_maskrcnn.data.shapes import default_dataset

    splits = default_dataset()
    images = sorted(json.loads(splits.val_ann.read_text())["images"], key=lambda img: img["id"])
    return [splits.val_images / img["file_name"] for img in images[:count]]
