"""Exporting a trained model to ONNX or TorchScript, without F-Noise (the library side of ``export``).

F-Noise only acts in training, so the exported graph is built from a plain torchvision
``BackboneWithFPN`` (:meth:`FNoiseBackboneWithFPN.without_f_noise`): no F-Noise module or op is in it.

ONNX (TorchScript-based exporter, ``dynamo=False``, as torchvision tests its detection models): the
graph takes ONE image per run, ``image`` float32 ``[3, H, W]`` in ``[0, 1]`` with any ``H`` and ``W``
(resizing to ``min_size``/``max_size`` is inside the graph), and returns ``boxes`` float32 ``[N, 4]``
XYXY, ``labels`` int64 ``[N]``, ``scores`` float32 ``[N]`` and ``masks`` float32 ``[N, 1, H, W]``.
For a batch, run the session once per image.

TorchScript (``torch.jit.script``): the scripted torchvision ``MaskRCNN``; call it with a list of
images of any sizes; in eval mode it returns ``(losses, detections)``.

Both files carry the checkpoint's categories (label ``i`` is ``categories[i - 1]``) and model config
as JSON: ONNX in ``metadata_props`` (keys ``categories``, ``model_config``), TorchScript in the extra
files ``categories.json`` and ``model_config.json``.
"""

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torchvision.models.detection import MaskRCNN

from ..backbone import FNoiseBackboneWithFPN
from ..io.atomic import atomic_path
from ..io.model_io import model_from_checkpoint

__all__ = ["FORMATS", "ONNX_OPSET", "strip_f_noise", "export_onnx", "export_torchscript", "export"]

FORMATS = ("onnx", "torchscript")
#: torchvision's detection models export with opset >= 11; 17 is supported by every current onnxruntime.
ONNX_OPSET = 17
ONNX_INPUT = "image"
ONNX_OUTPUTS = ("boxes", "labels", "scores", "masks")


def strip_f_noise(model: MaskRCNN) -> MaskRCNN:
    """Replaces an F-Noise backbone by the plain ``BackboneWithFPN`` it wraps (same modules); in place."""
    if isinstance(model.backbone, FNoiseBackboneWithFPN):
        model.backbone = model.backbone.without_f_noise()
    return model


def _metadata(checkpoint: Mapping[str, Any]) -> dict[str, str]:
    return {
        "categories": json.dumps(list(checkpoint["categories"])),
        "model_config": json.dumps(checkpoint["model_config"]),
    }


def _example_image(model: MaskRCNN) -> torch.Tensor:
    """A random image of the model's working size, non-square so that H and W are traced apart."""
    size = int(model.transform.min_size[-1])
    generator = torch.Generator().manual_seed(0)
    return torch.rand(3, size, size * 5 // 4, generator=generator)


def export_onnx(model: MaskRCNN, path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Writes ``model`` (eval mode, F-Noise stripped) to ``path`` as ONNX with dynamic ``H``, ``W`` and ``N``.

    The file is written atomically; ``metadata`` goes into the model's ``metadata_props``.
    """
    import onnx

    example = _example_image(model)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            # The TorchScript-based exporter warns about every shape-dependent Python value it traces
            # (all intended: sizes are recomputed from the input at run time).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                ([example],),
                str(tmp),
                dynamo=False,
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
                input_names=[ONNX_INPUT],
                output_names=list(ONNX_OUTPUTS),
                dynamic_axes={
                    ONNX_INPUT: {1: "height", 2: "width"},
                    "boxes": {0: "detections"},
                    "labels": {0: "detections"},
                    "scores": {0: "detections"},
                    "masks": {0: "detections", 2: "height", 3: "width"},
                },
            )
        proto = onnx.load(str(tmp))
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))


def export_torchscript(model: MaskRCNN, path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Writes ``torch.jit.script(model)`` to ``path`` atomically; ``metadata`` as ``<key>.json`` files."""
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, which cannot yet take torchvision's
        # detection models with their data-dependent shapes.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model)
    extra_files = {f"{key}.json": value for key, value in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(scripted, str(tmp), _extra_files=extra_files)


def export(checkpoint: Path, fmt: str, out: Path, score_thresh: float | None = None) -> None:
    """Loads ``checkpoint``, strips F-Noise and writes the model to ``out`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    model, ckpt = model_from_checkpoint(checkpoint, device="cpu")
    strip_f_noise(model)
    if score_thresh is not None:
        model.roi_heads.score_thresh = score_thresh
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        export_onnx(model, out, _metadata(ckpt))
    else:
        export_torchscript(model, out, _metadata(ckpt))
