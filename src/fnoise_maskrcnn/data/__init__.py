"""COCO-format instance segmentation data: dataset, transforms, loaders, checks, synthetic data.

Command-line tools: ``python -m fnoise_maskrcnn.data.validate``, ``.subset`` and ``.synthetic``.
The public names are imported on first use, so the annotation-only tools (subset, validate) do
not import torch.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_PUBLIC = {
    "CocoInstances": ".dataset",
    "DatasetError": ".annotations",
    "GroupedBatchSampler": ".loader",
    "build_dataloader": ".loader",
    "collate_fn": ".loader",
    "set_epoch": ".loader",
    "build_transforms": ".transforms",
    "ValidationReport": ".validation",
    "validate_coco": ".validation",
}

__all__ = list(_PUBLIC)

if TYPE_CHECKING:
    from .annotations import DatasetError as DatasetError
    from .dataset import CocoInstances as CocoInstances
    from .loader import GroupedBatchSampler as GroupedBatchSampler
    from .loader import build_dataloader as build_dataloader
    from .loader import collate_fn as collate_fn
    from .loader import set_epoch as set_epoch
    from .transforms import build_transforms as build_transforms
    from .validation import ValidationReport as ValidationReport
    from .validation import validate_coco as validate_coco

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
