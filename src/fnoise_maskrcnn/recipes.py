"""Named training recipes: sets of ``train`` defaults that explicit flags override.

A recipe is a plain mapping from ``train``'s argument names (argparse ``dest``) to values. ``train``
applies it as parser defaults, then parses the command line once, so anything given on the command
line wins (config → parser defaults → argv, as timm's ``_parse_args``).

``synthetic`` is what ``train`` uses when it is given no data and no ``--recipe``: the quick start.
Each recipe's values were chosen by measured runs; ``docs/training.md`` and
``benchmarks/results/`` hold the figures.
"""

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["RECIPES", "RECIPE_HELP", "LIGHT_HEADS", "recipe_defaults"]

#: Fewer RPN proposals and sampled RoIs than torchvision's defaults (2000/2000 proposals, 512 RoIs):
#: on small images and few instances per image the RoI heads otherwise dominate the step time.
LIGHT_HEADS = (
    ("box_batch_size_per_image", 32),
    ("rpn_batch_size_per_image", 128),
    ("rpn_pre_nms_top_n_train", 600),
    ("rpn_post_nms_top_n_train", 300),
    ("rpn_pre_nms_top_n_test", 300),
    ("rpn_post_nms_top_n_test", 150),
)


def _light_heads(**overrides: int) -> list:
    return [[key, overrides.pop(key, value)] for key, value in LIGHT_HEADS] + [
        [k, v] for k, v in overrides.items()
    ]


_RECIPES: dict[str, dict[str, Any]] = {
    # torchvision's references/detection defaults for Mask R-CNN: 26 epochs, lr 0.02 per 16 images
    # (scaled linearly), steps at epochs 16 and 22, 1000 warmup iterations, 800/1333 px, BatchNorm as
    # torchvision's rule gives it.
    "torchvision": {
        "norm": None,
        "min_size": 800,
        "max_size": 1333,
        "batch_size": 2,
        "epochs": 26,
        "opt": "sgd",
        "lr": None,
        "lr_scheduler": "multistep",
        "lr_steps": None,
        "warmup_iters": 1000,
        "amp": False,
        "model_kwarg": [],
    },
    # From scratch on the built-in synthetic shapes, sized for a few CPU cores: GroupNorm everywhere,
    # 160 px, bf16 autocast, light RoI heads, SGD with a short warmup and a cosine decay; 3 epochs of 400
    # images (300 iterations) are the quick start. Pass --epochs for longer runs.
    "synthetic": {
        "norm": "gn",
        "min_size": 160,
        "max_size": 160,
        "batch_size": 4,
        "synthetic_images": 400,
        "epochs": 3,
        "opt": "sgd",
        "lr": 0.02,
        "lr_scheduler": "cosine",
        "warmup_iters": 50,
        "amp": True,
        "model_kwarg": _light_heads(),
    },
    # From scratch on any small COCO-format set on a few CPU cores: as ``synthetic`` at 384 px, with scale
    # jitter, for more epochs.
    "cpu-scratch": {
        "norm": "gn",
        "min_size": 384,
        "max_size": 512,
        "batch_size": 4,
        "epochs": 24,
        "opt": "sgd",
        "lr": 0.02,
        "lr_scheduler": "cosine",
        "warmup_iters": 100,
        "amp": True,
        "scale_jitter": True,
        "model_kwarg": _light_heads(
            box_batch_size_per_image=64,
            rpn_pre_nms_top_n_test=1000,
            rpn_post_nms_top_n_test=500,
            box_detections_per_img=200,
        ),
    },
    # detectron2's scratch GN recipe (He et al. 2018) at 3x: GroupNorm (use --norm syncbn for SyncBN
    # under torchrun), 800/1333 px, 2 images per GPU, lr 0.02 per 16 images, 37 epochs with steps at 28
    # and 34, a 1000-iteration warmup, mixed precision.
    "gpu-scratch": {
        "norm": "gn",
        "min_size": 800,
        "max_size": 1333,
        "batch_size": 2,
        "epochs": 37,
        "opt": "sgd",
        "lr": None,
        "lr_scheduler": "multistep",
        "lr_steps": [28, 34],
        "warmup_iters": 1000,
        "amp": True,
        "model_kwarg": [],
    },
}

#: One line per recipe, for ``--help``.
RECIPE_HELP: Mapping[str, str] = MappingProxyType(
    {
        "torchvision": "torchvision's reference defaults (BatchNorm, 800/1333 px, 26 epochs)",
        "synthetic": "from scratch on the synthetic shapes, 160 px, 3 epochs (default without data flags)",
        "cpu-scratch": "from scratch on a small COCO-format set, GroupNorm at 384-512 px, 24 epochs",
        "gpu-scratch": "from scratch, GroupNorm, 800/1333 px, 37 epochs (detectron2's scratch 3x)",
    }
)

RECIPES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {name: MappingProxyType(values) for name, values in _RECIPES.items()}
)


def recipe_defaults(name: str) -> dict[str, Any]:
    """A copy of recipe ``name``'s values (lists copied too), ready for ``parser.set_defaults``."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return copy.deepcopy(dict(RECIPES[name]))
