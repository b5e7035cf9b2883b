"""Inference speed on the CPU: ours against stock torchvision with the same weights, and PyTorch
against ONNX Runtime running our ONNX export.

Four variants see the same real images (coco128 val, else synthetic), one image per call (the ONNX
graph takes one image), interleaved round by round so that load from other processes affects all
alike; the JSON output has the median images/s per variant and the median per-round ratios.

- ``ours``: ``model_from_checkpoint`` (the F-Noise model in eval mode);
- ``torchvision``: ``torchvision.models.detection.MaskRCNN`` built from torchvision's own parts with
  the checkpoint's state_dict loaded (strict);
- ``onnxruntime``: ``python -m fnoise_maskrcnn.export --format onnx`` under onnxruntime's CPU provider;
- ``ours_no_f_noise``: ours with the F-Noise module removed (what export does), to isolate its cost.

    python benchmarks/bench_inference.py [--checkpoint CKPT] [--images 2] [--rounds 3] [--threads 2]

Without ``--checkpoint`` a random-weight ResNet-50 model at ``--min-size 256 --max-size 384``, keeping
20 detections per image, is used (see ``_inference_common.write_random_checkpoint``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torchvision.models import resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import misc as misc_nn_ops

from _inference_common import benchmark_images, write_random_checkpoint
from _results import write_result
from _timing import interleaved_seconds, median_ratio
from fnoise_maskrcnn.deploy.export import export
from fnoise_maskrcnn.io.images import read_image_tensor
from fnoise_maskrcnn.io.model_io import model_from_checkpoint


def stock_torchvision_model(checkpoint: dict) -> MaskRCNN:
    """The same network assembled from torchvision's own modules only (ResNet-50 checkpoints)."""
    config = checkpoint["model_config"]
    if config["arch"] != "resnet50":
        raise SystemExit("error: the torchvision comparison is for resnet50 checkpoints")
    norm_layer = (
        misc_nn_ops.FrozenBatchNorm2d
        if config.get("norm", "frozen_bn" if config.get("frozen_batchnorm") else "bn") == "frozen_bn"
        else torch.nn.BatchNorm2d
    )
    backbone = _resnet_fpn_extractor(
        resnet50(weights=None, norm_layer=norm_layer), config["trainable_backbone_layers"] or 5
    )
    model = MaskRCNN(backbone, num_classes=config["num_classes"], **config["model_kwargs"])
    model.load_state_dict(checkpoint["model"], strict=True)
    return model.eval()


def build_variants(args: argparse.Namespace, tmp: Path) -> tuple[dict, float]:
    """The four models (ours, torchvision, ours without F-Noise, ONNX Runtime session) and the export's
    seconds."""
    import onnxruntime as ort

    ckpt_path = args.checkpoint or write_random_checkpoint(
        tmp / "random.pth", 81, args.min_size, args.max_size
    )
    ours, checkpoint = model_from_checkpoint(ckpt_path)
    stripped, _ = model_from_checkpoint(ckpt_path)
    stripped.backbone = stripped.backbone.without_f_noise()
    start = time.perf_counter()
    export(ckpt_path, "onnx", tmp / "model.onnx")
    export_seconds = time.perf_counter() - start
    print(f"exported in {export_seconds:.0f} s", file=sys.stderr)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    # ORT's threads spin-wait after each run by default, taking the CPU from the PyTorch variant
    # that runs next in this process; without spinning every variant gets the same machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(tmp / "model.onnx"), options, providers=["CPUExecutionProvider"])
    models = {"ours": ours, "torchvision": stock_torchvision_model(checkpoint), "ours_no_f_noise": stripped}
    return {**models, "onnxruntime": session}, export_seconds


def runner(model, images: list[torch.Tensor]):
    """One call: every image through ``model`` (a PyTorch model or an ONNX Runtime session), one at a time."""
    if isinstance(model, torch.nn.Module):

        def run_torch():
            with torch.inference_mode():
                return [model([image])[0] for image in images]

        return run_torch
    return lambda: [model.run(None, {"image": image.numpy()}) for image in images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-size", type=int, default=256)
    parser.add_argument("--max-size", type=int, default=384)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    paths = benchmark_images(args.images)
    images = [read_image_tensor(p) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        variants, export_seconds = build_variants(args, Path(tmp))
    jobs = {name: runner(model, images) for name, model in variants.items()}
    seconds = interleaved_seconds(jobs, args.rounds)  # the untimed round warms allocator and ORT graph
    reference = jobs["torchvision"]()
    same = all(
        torch.equal(a[k], b[k])
        for a, b in zip(jobs["ours"](), reference)
        for k in ("boxes", "labels", "scores", "masks")
    )

    def ratio(a: str, b: str) -> float:
        return median_ratio(seconds[a], seconds[b])

    report = {
        "setting": f"CPU, torch threads {args.threads}",
        "onnxruntime": ort.__version__,
        "checkpoint": str(args.checkpoint)
        if args.checkpoint
        else f"random resnet50, min_size {args.min_size}, max_size {args.max_size}",
        "images": [f"{p.name} {tuple(i.shape[1:])}" for p, i in zip(paths, images)],
        "detections_per_image": [len(o["scores"]) for o in reference],
        "onnx_detections_per_image": [len(o[2]) for o in jobs["onnxruntime"]()],
        "rounds": args.rounds,
        "images_per_second_median": {n: len(images) / statistics.median(s) for n, s in seconds.items()},
        "time_ratio_ours_over_torchvision": ratio("ours", "torchvision"),
        "time_ratio_ours_no_f_noise_over_torchvision": ratio("ours_no_f_noise", "torchvision"),
        "time_ratio_onnxruntime_over_pytorch": ratio("onnxruntime", "ours_no_f_noise"),
        "ours_equals_torchvision_bitwise": same,
        "onnx_export_seconds": export_seconds,
    }
    print(json.dumps(report, indent=2))
    print(f"wrote {write_result('inference', report)}")


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main()
