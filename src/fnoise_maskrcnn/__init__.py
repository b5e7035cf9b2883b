"""fnoise-maskrcnn: torchvision's Mask R-CNN with F-Noise in the backbone.

The public names are imported on first use, so that ``python -m fnoise_maskrcnn.data.subset`` and
other jobs that need no model do not pay for importing torchvision's models.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

_PUBLIC = {
    "FNoise": ".fnoise",
    "F_NOISE_MODES": ".fnoise",
    "FNoiseBackboneWithFPN": ".backbone",
    "maskrcnn_resnet50_fpn": ".models",
    "maskrcnn_mobilenet_v3_large_fpn": ".models",
    "build_model": ".models",
}

__all__ = [*_PUBLIC, "__version__"]

if TYPE_CHECKING:
    from .backbone import FNoiseBackboneWithFPN as FNoiseBackboneWithFPN
    from .fnoise import F_NOISE_MODES as F_NOISE_MODES
    from .fnoise import FNoise as FNoise
    from .models import build_model as build_model
    from .models import maskrcnn_mobilenet_v3_large_fpn as maskrcnn_mobilenet_v3_large_fpn
    from .models import maskrcnn_resnet50_fpn as maskrcnn_resnet50_fpn

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
