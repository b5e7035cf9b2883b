"""COCO-format instance segmentation data: dataset, transforms, loaders, checks, synthetic data.

Command-line tools: ``python -m fnoise_maskrcnn.data.validate``, ``.subset`` and ``.synthetic``.
"""

from .annotations import DatasetError
from .dataset import CocoInstances
from .loader import GroupedBatchSampler, build_dataloader, collate_fn, set_epoch
from .transforms import build_transforms
from .validation import ValidationReport, validate_coco

__all__ = [
    "CocoInstances",
    "DatasetError",
    "GroupedBatchSampler",
    "build_dataloader",
    "build_transforms",
    "collate_fn",
    "set_epoch",
    "ValidationReport",
    "validate_coco",
]
