"""Mask R-CNN factories with F-Noise, mirroring torchvision's ``maskrcnn_resnet50_fpn``.

Both factories accept every argument of the torchvision factory of the same name with the same
meaning, plus ``use_f_noise``, ``f_noise_std``, ``f_noise_mode`` and ``f_noise_levels``. In addition,
``weights`` and ``weights_backbone`` accept a local file path, so weights can be used offline.

Every model built here carries ``model.build_config``: the plain-dict configuration that
:func:`build_model` turns back into the same architecture (it is what checkpoints store).
"""

import copy
import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, mobilenet_v3_large, resnet50
from torchvision.models._api import WeightsEnum
from torchvision.models._utils import handle_legacy_interface
from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_Weights
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import (
    _mobilenet_extractor,
    _resnet_fpn_extractor,
    _validate_trainable_layers,
)
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import misc as misc_nn_ops

from .backbone import FNoiseBackboneWithFPN
from .fnoise import FNoiseConfig
from .io.checkpoint import load_state_dict_file

__all__ = [
    "ARCHITECTURES",
    "BODY_LEVELS",
    "NORMS",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_mobilenet_v3_large_fpn",
    "build_model",
]

ARCHITECTURES = ("resnet50", "mobilenet_v3")
#: The backbone body's outputs per architecture: the level names F-Noise can perturb (C2..C5 of the ResNet).
BODY_LEVELS: dict[str, tuple[str, ...]] = {"resnet50": ("0", "1", "2", "3"), "mobilenet_v3": ("0", "1")}
#: Normalisation choices. ``bn``: BatchNorm (torchvision's default from scratch); ``frozen_bn``: frozen
#: BatchNorm (its default with pretrained weights); ``gn``: GroupNorm(32) in the backbone, FPN, a 4conv1fc box
#: head and the mask head (the from-scratch recipe of He et al. 2018); ``syncbn``: BatchNorm that the trainer
#: converts to SyncBatchNorm under DDP.
NORMS = ("bn", "frozen_bn", "gn", "syncbn")
GROUP_NORM_GROUPS = 32

WeightsArg = WeightsEnum | str | os.PathLike | None


class _LocalPath(str):
    """A weights path given as a path object, made a ``str`` so torchvision's legacy handling passes it on."""


def _accept_path_objects(builder: Callable[..., MaskRCNN]) -> Callable[..., MaskRCNN]:
    """Lets ``weights``/``weights_backbone`` be ``os.PathLike``.

    torchvision's ``handle_legacy_interface`` reads any value that is neither a weights enum, a string
    nor ``None`` as the legacy ``pretrained=True`` (a ``pathlib.Path`` would download COCO weights), so
    path objects are turned into :class:`_LocalPath` strings before it sees them.
    """

    @functools.wraps(builder)
    def wrapper(*args: Any, **kwargs: Any) -> MaskRCNN:
        for name in ("weights", "weights_backbone"):
            if isinstance(kwargs.get(name), os.PathLike):
                kwargs[name] = _LocalPath(os.fspath(kwargs[name]))
        return builder(*args, **kwargs)

    return wrapper


def _is_local_path(value: Any) -> bool:
    """A weights argument names a local file if it is a path object or a string that looks like one."""
    if isinstance(value, (os.PathLike, _LocalPath)):
        return True
    return isinstance(value, str) and (
        os.sep in value or value.endswith((".pth", ".pt")) or Path(value).exists()
    )


def _load_weights(
    weights: WeightsArg, enum_type: type | None, argument: str, progress: bool
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any], WeightsEnum | None]:
    """Resolves a weights argument to ``(state_dict, our model_config or {}, enum or None)``.

    Enums and their names (``"DEFAULT"``, ``"COCO_V1"`` ...) download as in torchvision; local paths
    are read with ``weights_only=True``. ``None`` gives ``(None, {}, None)``.
    """
    if weights is None:
        return None, {}, None
    if _is_local_path(weights):
        if not Path(weights).is_file():
            raise FileNotFoundError(f"{argument}: weights file {str(weights)!r} does not exist")
        state_dict, config = load_state_dict_file(weights)
        return state_dict, config, None
    if enum_type is None:
        raise ValueError(
            f"{argument}: torchvision publishes no weights for this model; pass a local file path"
        )
    try:
        enum = enum_type.verify(weights)
    except KeyError:
        names = ", ".join(enum_type.__members__)  # aliases such as DEFAULT included
        raise ValueError(
            f"{argument}: unknown weights {weights!r}; allowed: {names}, a {enum_type.__name__} "
            "or a local file path"
        ) from None
    try:
        state_dict = enum.get_state_dict(progress=progress, check_hash=True)
    except (URLError, OSError) as exc:
        raise RuntimeError(
            f"{argument}: could not download {enum} ({exc}); offline, pass a local file path or None"
        ) from exc
    return state_dict, {}, enum


def _num_classes_of(state_dict: Mapping[str, torch.Tensor]) -> int:
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state_dict:
        raise ValueError(f"weights: not a Mask R-CNN state_dict (no {key!r})")
    return int(state_dict[key].shape[0])


def _replace_predictors(model: MaskRCNN, num_classes: int) -> None:
    """Gives the box and mask heads new predictors for ``num_classes`` (as torchvision's fine-tuning
    tutorial)."""
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    mask_in = model.roi_heads.mask_predictor.conv5_mask.in_channels
    mask_hidden = model.roi_heads.mask_predictor.conv5_mask.out_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_in, mask_hidden, num_classes)


def group_norm(num_channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or the largest divisor of ``num_channels`` dividing 32 (MobileNetV3's 40,
    72...)."""
    return nn.GroupNorm(math.gcd(GROUP_NORM_GROUPS, num_channels), num_channels)


def _resolve_norm(norm: str | None, frozen_batchnorm: bool | None, is_trained: bool) -> str:
    """The normalisation to build: ``norm`` if given, else the legacy ``frozen_batchnorm`` flag, else
    torchvision's rule."""
    if norm is not None:
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
        return norm
    if frozen_batchnorm is not None:
        return "frozen_bn" if frozen_batchnorm else "bn"
    return "frozen_bn" if is_trained else "bn"


def _gn_heads(out_channels: int) -> dict[str, nn.Module]:
    """The GroupNorm box head (4conv1fc, as torchvision's v2 model) and mask head (4 convs) of the GN
    recipe."""
    return {
        "box_head": FastRCNNConvFCHead((out_channels, 7, 7), [256] * 4, [1024], norm_layer=group_norm),
        "mask_head": MaskRCNNHeads(out_channels, [256] * 4, 1, norm_layer=group_norm),
    }


def _calibrate_predictors(model: MaskRCNN) -> None:
    """detectron2's predictor initialisation: small output layers, so training starts near chance losses.

    Box classifier weights ~ N(0, 0.01), box regression ~ N(0, 0.001), mask logits ~ N(0, 0.001), biases 0.
    With GroupNorm heads, torchvision's default initialisation starts the mask loss near 2 instead of ln 2.
    """
    predictor = model.roi_heads.box_predictor
    for layer, std in ((predictor.cls_score, 0.01), (predictor.bbox_pred, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)
    logits = model.roi_heads.mask_predictor.mask_fcn_logits
    nn.init.normal_(logits.weight, std=0.001)
    nn.init.zeros_(logits.bias)


def _anchor_generator(arch: str, sizes: Sequence[int]) -> AnchorGenerator:
    """Anchors of ``sizes`` px: one size per FPN level for ResNet-50 (5 levels, as torchvision's
    ``((32,), (64,), (128,), (256,), (512,))``), all sizes on each of MobileNetV3's 3 levels."""
    if not sizes or any(size < 1 for size in sizes):
        raise ValueError(f"anchor_sizes must be positive integers, got {list(sizes)}")
    if arch == "resnet50":
        if len(sizes) != 5:
            raise ValueError(f"anchor_sizes needs 5 sizes for resnet50 (one per FPN level), got {len(sizes)}")
        per_level = tuple((size,) for size in sizes)
    else:
        per_level = (tuple(sizes),) * 3
    return AnchorGenerator(per_level, ((0.5, 1.0, 2.0),) * len(per_level))


def _detector_weights(
    weights: WeightsArg, detector_enum: Any, num_classes: int | None, progress: bool
) -> tuple[dict[str, torch.Tensor] | None, Any, int, int]:
    """``(state_dict, weights enum, classes the weights were built with, classes wanted)``: the detector
    weights, if any, and the class counts (torchvision's 91 with neither weights nor ``num_classes``)."""
    state_dict, source_config, weights_enum = _load_weights(weights, detector_enum, "weights", progress)
    target_num_classes = num_classes
    if state_dict is not None:
        num_classes = int(source_config.get("num_classes", _num_classes_of(state_dict)))
        if weights_enum is not None and target_num_classes is None:
            target_num_classes = len(weights_enum.meta["categories"])
    elif num_classes is None:
        num_classes = 91
    return (
        state_dict,
        weights_enum,
        num_classes,
        num_classes if target_num_classes is None else target_num_classes,
    )


def _head_kwargs(arch: str, norm: str, anchor_sizes: list[int] | None) -> dict[str, Any]:
    """MaskRCNN keyword arguments for the heads: GroupNorm heads for ``norm="gn"`` (their weights are
    drawn here), and the RPN anchors (``anchor_sizes``, or MobileNetV3's five sizes on one level)."""
    head_kwargs: dict[str, Any] = _gn_heads(256) if norm == "gn" else {}
    if anchor_sizes is not None:
        head_kwargs["rpn_anchor_generator"] = _anchor_generator(arch, anchor_sizes)
    elif arch == "mobilenet_v3":
        head_kwargs["rpn_anchor_generator"] = _anchor_generator(arch, [32, 64, 128, 256, 512])
    return head_kwargs


def _norm_and_trainable_layers(
    norm: str | None,
    frozen_batchnorm: bool | None,
    is_trained: bool,
    trainable_layers: int | None,
    max_trainable: int,
) -> tuple[str, int]:
    """The normalisation (:func:`_resolve_norm`) and the trainable body stages: torchvision's rule (3 with
    pretrained weights, else all, checked) under torchvision's normalisation; all by default with an
    explicit one."""
    if norm is None and frozen_batchnorm is None:
        trainable_layers = _validate_trainable_layers(is_trained, trainable_layers, max_trainable, 3)
    elif trainable_layers is None:
        trainable_layers = max_trainable
    return _resolve_norm(norm, frozen_batchnorm, is_trained), trainable_layers


def _arch_spec(arch: str) -> tuple[Any, Any, int, dict[str, Any]]:
    """``(detector weights enum or None, backbone weights enum, body stages, MaskRCNN defaults)``."""
    if arch == "resnet50":
        return MaskRCNN_ResNet50_FPN_Weights, ResNet50_Weights, 5, {}
    if arch == "mobilenet_v3":  # torchvision's score threshold for its MobileNetV3 detectors
        return None, MobileNet_V3_Large_Weights, 6, {"rpn_score_thresh": 0.05}
    raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}; got {arch!r}")


def _load_detector_weights(
    model: MaskRCNN, state_dict: dict[str, torch.Tensor], weights_enum: Any, num_classes: int
) -> None:
    """Loads whole-detector weights, then gives the model ``num_classes`` new predictors if the weights
    were trained for another number of classes."""
    model.load_state_dict(state_dict)
    if weights_enum == MaskRCNN_ResNet50_FPN_Weights.COCO_V1:
        overwrite_eps(model, 0.0)
    if model.roi_heads.box_predictor.cls_score.out_features != num_classes:
        _replace_predictors(model, num_classes)


def _build(
    arch: str,
    *,
    weights: WeightsArg,
    progress: bool,
    num_classes: int | None,
    weights_backbone: WeightsArg,
    trainable_backbone_layers: int | None,
    f_noise: FNoiseConfig,
    norm: str | None = None,
    frozen_batchnorm: bool | None = None,
    anchor_sizes: Sequence[int] | None = None,
    **kwargs: Any,
) -> MaskRCNN:
    """Builds a Mask R-CNN the way torchvision's factories do, with an F-Noise backbone.

    ``norm`` (one of :data:`NORMS`) overrides torchvision's rule (frozen BatchNorm when any pretrained
    weights are given, else BatchNorm); ``frozen_batchnorm`` is the older spelling of the same choice,
    read from checkpoints written before ``norm`` existed.
    """
    detector_enum, backbone_enum, max_trainable, arch_kwargs = _arch_spec(arch)
    model_kwargs = {**arch_kwargs, **kwargs}
    state_dict, weights_enum, num_classes, target_num_classes = _detector_weights(
        weights, detector_enum, num_classes, progress
    )
    if state_dict is not None:
        weights_backbone = None
    backbone_state, _, backbone_weights_enum = _load_weights(
        weights_backbone, backbone_enum, "weights_backbone", progress
    )
    is_trained = state_dict is not None or backbone_state is not None
    norm, trainable_backbone_layers = _norm_and_trainable_layers(
        norm, frozen_batchnorm, is_trained, trainable_backbone_layers, max_trainable
    )
    norm_layer = {"frozen_bn": misc_nn_ops.FrozenBatchNorm2d, "gn": group_norm}.get(norm, nn.BatchNorm2d)
    fpn_norm = group_norm if norm == "gn" else None
    if anchor_sizes is not None:
        anchor_sizes = [int(size) for size in anchor_sizes]
    head_kwargs = _head_kwargs(arch, norm, anchor_sizes)  # before the backbone: the RNG order is fixed

    backbone = _backbone(
        arch, norm_layer, fpn_norm, backbone_state, trainable_backbone_layers, progress, f_noise
    )
    model = MaskRCNN(backbone, num_classes=num_classes, **head_kwargs, **model_kwargs)

    if norm == "gn":
        _calibrate_predictors(model)
    if state_dict is not None:
        _load_detector_weights(model, state_dict, weights_enum, target_num_classes)

    model.build_config = {
        "arch": arch,
        "num_classes": target_num_classes,
        "trainable_backbone_layers": trainable_backbone_layers,
        "norm": norm,
        "anchor_sizes": anchor_sizes,
        "f_noise": f_noise.to_dict(),
        "model_kwargs": copy.deepcopy(model_kwargs),
    }
    return model


def _backbone(
    arch: str,
    norm_layer: Callable[..., nn.Module],
    fpn_norm: Callable[..., nn.Module] | None,
    backbone_state: dict[str, torch.Tensor] | None,
    trainable_layers: int,
    progress: bool,
    f_noise: FNoiseConfig,
) -> FNoiseBackboneWithFPN:
    """The body (with ``backbone_state`` loaded) and FPN from torchvision's own extractors, with F-Noise
    between."""
    if arch == "resnet50":
        body = resnet50(weights=None, progress=progress, norm_layer=norm_layer)
    else:
        body = mobilenet_v3_large(weights=None, progress=progress, norm_layer=norm_layer)
    if backbone_state is not None:
        body.load_state_dict(backbone_state)
    if arch == "resnet50":
        with_fpn = _resnet_fpn_extractor(body, trainable_layers, norm_layer=fpn_norm)
    else:
        with_fpn = _mobilenet_extractor(body, True, trainable_layers, norm_layer=fpn_norm)
    return FNoiseBackboneWithFPN.from_backbone_with_fpn(with_fpn, f_noise)


def _f_noise(
    enabled: bool,
    std: float | Mapping[str, float],
    mode: str,
    levels: Sequence[str] | None,
    distribution: str,
) -> FNoiseConfig:
    """The factories' flat ``f_noise_*`` arguments as the one configuration object (validated here, before
    any weights are read)."""
    levels = tuple(levels) if levels is not None and not isinstance(levels, str) else levels
    return FNoiseConfig(enabled=bool(enabled), std=std, mode=mode, distribution=distribution, levels=levels)


@_accept_path_objects
@handle_legacy_interface(
    weights=("pretrained", MaskRCNN_ResNet50_FPN_Weights.COCO_V1),
    weights_backbone=("pretrained_backbone", ResNet50_Weights.IMAGENET1K_V1),
)
def maskrcnn_resnet50_fpn(
    *,
    weights: WeightsArg = None,
    progress: bool = True,
    num_classes: int | None = None,
    weights_backbone: WeightsArg = ResNet50_Weights.IMAGENET1K_V1,
    trainable_backbone_layers: int | None = None,
    use_f_noise: bool = False,
    f_noise_std: float | Mapping[str, float] = FNoiseConfig.std,
    f_noise_mode: str = FNoiseConfig.mode,
    f_noise_levels: Sequence[str] | None = None,
    f_noise_distribution: str = FNoiseConfig.distribution,
    norm: str | None = None,
    anchor_sizes: Sequence[int] | None = None,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN with a ResNet-50-FPN backbone and optional F-Noise between ResNet body and FPN.

    With ``use_f_noise=False``, or in eval mode, this is exactly
    ``torchvision.models.detection.maskrcnn_resnet50_fpn``: same modules, same initialisation for
    the same seed, same ``state_dict`` keys, same outputs.

    The input is a list of ``Tensor[3, H, W]`` images in ``[0, 1]``; in training mode the targets
    are dicts with ``boxes`` (``FloatTensor[N, 4]``, XYXY), ``labels`` (``Int64Tensor[N]``) and
    ``masks`` (``UInt8Tensor[N, H, W]``), and the output is a dict of the five losses; in eval mode
    the output is one dict per image with ``boxes``, ``labels``, ``scores`` and ``masks``
    (``FloatTensor[N, 1, H, W]`` in ``[0, 1]``).

    Args:
        weights: ``MaskRCNN_ResNet50_FPN_Weights`` (or its name) as in torchvision, or a local file:
            a torchvision Mask R-CNN ``state_dict`` or one of our checkpoints. If ``num_classes``
            differs from the weights', the box and mask predictors are replaced by new ones.
        progress: show a download progress bar.
        num_classes: number of classes including the background (default: that of ``weights``, or 91).
        weights_backbone: ``ResNet50_Weights`` (or its name), or a local file with a ResNet-50
            ``state_dict``; ``None`` trains from scratch. Ignored when ``weights`` is given.
        trainable_backbone_layers: number of trainable ResNet stages counted from the last (0-5);
            default 3 with pretrained weights, 5 without.
        use_f_noise: perturb the backbone body's features with :class:`~fnoise_maskrcnn.FNoise`
            while training.
        f_noise_std: the noise scale ``sigma`` (finite, ``>= 0``), or a mapping level -> sigma such as
            ``{"0": 0.05, "3": 0.2}`` (levels not named are untouched; give no ``f_noise_levels`` then).
        f_noise_mode: ``"elementwise"``, ``"channel"``, ``"sample"`` or ``"tensor"``.
        f_noise_distribution: ``"gaussian"`` or ``"uniform"`` (see :class:`~fnoise_maskrcnn.FNoise`).
        f_noise_levels: names of the body outputs to perturb, among ``"0"`` (C2) ... ``"3"`` (C5);
            ``None`` for all.
        norm: ``"bn"``, ``"frozen_bn"``, ``"gn"`` or ``"syncbn"`` (see :data:`NORMS`); ``None`` keeps
            torchvision's rule (frozen BatchNorm with pretrained weights, BatchNorm without). ``"gn"`` is
            the from-scratch choice: GroupNorm(32) in the ResNet, the FPN, a 4conv1fc box head and the
            mask head, with detectron2's small initialisation of the box and mask predictors. Default
            models keep torchvision's modules, initialisation and ``state_dict`` keys.
        anchor_sizes: RPN anchor sizes in pixels, one per FPN level (5), e.g. ``(16, 32, 64, 128, 256)``
            for small objects; ``None`` keeps torchvision's ``(32, 64, 128, 256, 512)``.
        **kwargs: passed to ``torchvision.models.detection.MaskRCNN`` (``min_size``, ``max_size``,
            ``box_detections_per_img`` ...).
    """
    return _build(
        "resnet50",
        weights=weights,
        progress=progress,
        num_classes=num_classes,
        weights_backbone=weights_backbone,
        trainable_backbone_layers=trainable_backbone_layers,
        f_noise=_f_noise(use_f_noise, f_noise_std, f_noise_mode, f_noise_levels, f_noise_distribution),
        norm=norm,
        anchor_sizes=anchor_sizes,
        **kwargs,
    )


@_accept_path_objects
@handle_legacy_interface(weights_backbone=("pretrained_backbone", MobileNet_V3_Large_Weights.IMAGENET1K_V1))
def maskrcnn_mobilenet_v3_large_fpn(
    *,
    weights: str | os.PathLike | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    weights_backbone: WeightsArg = MobileNet_V3_Large_Weights.IMAGENET1K_V1,
    trainable_backbone_layers: int | None = None,
    use_f_noise: bool = False,
    f_noise_std: float | Mapping[str, float] = FNoiseConfig.std,
    f_noise_mode: str = FNoiseConfig.mode,
    f_noise_levels: Sequence[str] | None = None,
    f_noise_distribution: str = FNoiseConfig.distribution,
    norm: str | None = None,
    anchor_sizes: Sequence[int] | None = None,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN with a MobileNetV3-Large-FPN backbone and optional F-Noise: the CPU-friendly variant.

    Built as torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` (the last two stages as FPN levels
    ``"0"`` and ``"1"``, three anchor sizes per level, ``rpn_score_thresh=0.05``), with the mask
    head of Mask R-CNN. torchvision publishes no weights for it, so ``weights`` is a local file or
    ``None``; ``weights_backbone`` is ``MobileNet_V3_Large_Weights`` (or its name) or a local file.
    Other arguments as for :func:`maskrcnn_resnet50_fpn` (``trainable_backbone_layers`` is 0-6).
    """
    return _build(
        "mobilenet_v3",
        weights=weights,
        progress=progress,
        num_classes=num_classes,
        weights_backbone=weights_backbone,
        trainable_backbone_layers=trainable_backbone_layers,
        f_noise=_f_noise(use_f_noise, f_noise_std, f_noise_mode, f_noise_levels, f_noise_distribution),
        norm=norm,
        anchor_sizes=anchor_sizes,
        **kwargs,
    )


def build_model(
    config: Mapping[str, Any],
    *,
    weights: WeightsArg = None,
    weights_backbone: WeightsArg = None,
    progress: bool = True,
) -> MaskRCNN:
    """Builds a model from a ``build_config`` dict (as stored in checkpoints under ``model_config``).

    Args:
        config: ``{"arch", "num_classes", "trainable_backbone_layers", "norm",
            "f_noise": {"enabled", "std", "mode", "distribution", "levels"}, "model_kwargs": {...}}``;
            missing keys take the factories' defaults (no F-Noise, ResNet-50).
        weights, weights_backbone: optional initial weights, as for the factories.
    """
    return _build(
        config.get("arch", "resnet50"),
        weights=weights,
        progress=progress,
        num_classes=config.get("num_classes"),
        weights_backbone=weights_backbone,
        trainable_backbone_layers=config.get("trainable_backbone_layers"),
        f_noise=FNoiseConfig.from_dict(config.get("f_noise")),
        norm=config.get("norm"),
        frozen_batchnorm=config.get("frozen_batchnorm"),
        anchor_sizes=config.get("anchor_sizes"),
        **dict(config.get("model_kwargs") or {}),
    )
