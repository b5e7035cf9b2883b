"""Do an exported ONNX model's detections agree with eager PyTorch's on images the model rescales?

The export tests can only compare detections on images the model's transform does not rescale: their
random-weight network turns the float32 rounding of the exported resize (about 1e-4) into different
detections. This runs a trained checkpoint instead. Each validation image is resampled to several sizes
(each a different aspect ratio, so the transform rescales all of them), and every resampled image goes
through eager PyTorch and through the exported graph; the detections are compared with
``fnoise_maskrcnn.deploy.agreement.compare_detections`` (same label, box within 1 px, score within
5e-3, soft masks within 5e-3 on average, for detections 0.03 above the score threshold).

    python benchmarks/bench_export_agreement.py --checkpoint runs/x/best.pth \\
        --images VAL_IMAGES_DIR --ann VAL_ANN.json [--max-images 12] [--scales 1.37 0.71]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from _results import write_result
from fnoise_maskrcnn.deploy.agreement import compare_detections, exported_resize
from fnoise_maskrcnn.deploy.export import export as export_model
from fnoise_maskrcnn.io.images import read_image_tensor
from fnoise_maskrcnn.io.model_io import model_from_checkpoint

#: Each scale stretches the height by ``scale`` and the width by ``scale * ASPECT``.
ASPECT = 0.93


def _resampled(image: torch.Tensor, scale: float) -> torch.Tensor:
    height, width = round(image.shape[1] * scale), round(image.shape[2] * scale * ASPECT)
    resized = torch.nn.functional.interpolate(image[None], size=(height, width), mode="bilinear")
    return resized[0].clamp(0, 1)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained checkpoint")
    parser.add_argument("--images", type=Path, required=True, help="folder of the validation images")
    parser.add_argument("--ann", type=Path, required=True, help="COCO annotation file naming them")
    parser.add_argument("--max-images", type=int, default=12, help="the first N images by id")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.37, 0.71])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="", help="conditions of the measurement, kept in the file")
    return parser.parse_args()


def main() -> None:
    import onnxruntime as ort

    args = _parse()
    torch.set_num_threads(args.threads)
    model, _ = model_from_checkpoint(args.checkpoint)
    model.eval()
    images = sorted(json.loads(args.ann.read_text())["images"], key=lambda img: img["id"])[: args.max_images]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        export_model(args.checkpoint, "onnx", onnx_file)
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    rows, matched_total = [], 0
    for entry in images:
        original = read_image_tensor(args.images / entry["file_name"])
        for scale in args.scales:
            image = _resampled(original, scale)
            with torch.inference_mode():
                expected = model([image])[0]
                eager_size = tuple(model.transform([image])[0].image_sizes[0])
            exported_size = exported_resize(
                *image.shape[1:], model.transform.min_size[-1], model.transform.max_size
            )
            actual = dict(
                zip(("boxes", "labels", "scores", "masks"), session.run(None, {"image": image.numpy()}))
            )
            matched, problems = compare_detections(expected, actual, model.roi_heads.score_thresh)
            matched_total += matched
            rows.append(
                {
                    "image": entry["file_name"],
                    "size": list(image.shape[1:]),
                    "resized_eager": list(eager_size),
                    "resized_exported": list(exported_size),
                    "matched": matched,
                    "problems": problems,
                }
            )
    same_size = [row for row in rows if row["resized_eager"] == row["resized_exported"]]
    agreeing = sum(not row["problems"] for row in rows)
    agreeing_same_size = sum(not row["problems"] for row in same_size)
    summary = (
        f"{agreeing} of {len(rows)} rescaled images give the same detections in ONNX Runtime as in eager "
        f"PyTorch ({matched_total} detections matched); of the {len(same_size)} resized to the same size "
        f"by both, {agreeing_same_size} agree; {len(rows) - len(same_size)} are resized one pixel apart"
    )
    print(summary)
    result = {
        "command": "python " + " ".join(sys.argv),
        "summary": summary,
        "checkpoint": str(args.checkpoint),
        "images_agreeing": agreeing,
        "images": len(rows),
        "images_resized_alike": len(same_size),
        "images_resized_alike_agreeing": agreeing_same_size,
        "detections_matched": matched_total,
        "disagreements": [row for row in rows if row["problems"]],
        "note": args.note,
    }
    print(f"wrote {write_result('export_agreement', result)}")


if __name__ == "__main__":
    main()
