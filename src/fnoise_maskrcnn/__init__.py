"""fnoise-maskrcnn: torchvision's Mask R-CNN with F-Noise in the backbone."""

from .backbone import FNoiseBackboneWithFPN
from .fnoise import F_NOISE_MODES, FNoise
from .models import build_model, maskrcnn_mobilenet_v3_large_fpn, maskrcnn_resnet50_fpn

__version__ = "0.1.0"

__all__ = [
    "FNoise",
    "F_NOISE_MODES",
    "FNoiseBackboneWithFPN",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_mobilenet_v3_large_fpn",
    "build_model",
    "__version__",
]
