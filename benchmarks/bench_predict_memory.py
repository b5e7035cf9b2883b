"""Peak memory and time of ``python -m fnoise_maskrcnn.predict`` on large images (issue 13, item 1).

Each run is a fresh process started by a fresh launcher, so ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` in the
launcher is the peak resident memory of that one predict run (reading, the model, pasting masks, drawing
and encoding the overlay PNG, writing results.json). The time is the whole command, start-up included.

The model is a random-weight MobileNetV3-FPN Mask R-CNN at the usual inference size (``min_size`` 800,
``max_size`` 1333), so that the backbone costs little and what grows with the image shows; BatchNorm
statistics are set from random images and the box classifier is re-initialised with a small std, so that
scores spread out as a trained model's do. It keeps up to ``--detections`` detections per image (its own
``box_score_thresh`` is 0.05, torchvision's default). Images are synthetic JPEGs: coloured rectangles on a
gradient.

Rows: each size at predict's default ``--score-thresh 0.5`` (only detections above it are pasted), and the
worst case ``--score-thresh 0`` (every detection the model keeps is pasted) for sizes up to
``--worst-case-max`` (at 8000 x 8000 the masks of 100 detections alone are 6.4 GB as bool).

    python benchmarks/bench_predict_memory.py [--sizes 1024 4096 8000] [--detections 100] [--threads 2]
        [--note "the machine was under load from another job"]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _inference_common import calibrate_random_model
from _results import write_result
from fnoise_maskrcnn import maskrcnn_mobilenet_v3_large_fpn
from fnoise_maskrcnn.io.checkpoint import make_checkpoint, save_checkpoint

MIN_SIZE, MAX_SIZE = 800, 1333
NUM_CATEGORIES = 4

#: Runs one command and prints its peak RSS (KiB, Linux) and wall time as JSON. A fresh launcher per run:
#: RUSAGE_CHILDREN is the maximum over every child the launcher has waited for.
_LAUNCHER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"returncode": done.returncode, "seconds": seconds, "peak_rss_kib": peak,
                  "stderr_tail": done.stderr[-1500:]}))
"""


def write_model(path: Path, detections: int, seed: int = 0) -> Path:
    """A random MobileNetV3-FPN Mask R-CNN with F-Noise keeping up to ``detections`` per image."""
    torch.manual_seed(seed)
    model = maskrcnn_mobilenet_v3_large_fpn(
        weights_backbone=None,
        num_classes=NUM_CATEGORIES + 1,
        use_f_noise=True,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        box_detections_per_img=detections,
    )
    calibrate_random_model(model, 320)
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, NUM_CATEGORIES + 1)]
    save_checkpoint(make_checkpoint(model.state_dict(), model.build_config, categories), path)
    return path


def write_image(path: Path, side: int, seed: int = 0) -> Path:
    """A ``side x side`` JPEG: 60 coloured rectangles on a gradient."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 215, side, dtype=np.float32)
    pixels = np.empty((side, side, 3), dtype=np.uint8)
    pixels[..., 0] = ramp[None, :]
    pixels[..., 1] = ramp[:, None]
    pixels[..., 2] = 128
    for _ in range(60):
        w, h = (rng.uniform(0.03, 0.2, 2) * side).astype(int)
        x, y = rng.integers(0, side - w), rng.integers(0, side - h)
        pixels[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def measure(checkpoint: Path, image: Path, out_dir: Path, score_thresh: float, threads: int) -> dict:
    """One predict run in a fresh process: peak RSS, time, detections written."""
    command = [
        sys.executable,
        "-m",
        "fnoise_maskrcnn.predict",
        "--checkpoint",
        str(checkpoint),
        str(image),
        "--out-dir",
        str(out_dir),
        "--score-thresh",
        str(score_thresh),
        "--device",
        "cpu",
    ]
    launched = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *command],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    run = json.loads(launched.stdout)
    results = out_dir / "results.json"
    run["detections_written"] = len(json.loads(results.read_text())) if results.is_file() else None
    run["peak_rss_gib"] = round(run.pop("peak_rss_kib") / 2**20, 3)
    run["seconds"] = round(run["seconds"], 2)
    if run["returncode"] == 0:
        run.pop("stderr_tail")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8000])
    parser.add_argument("--detections", type=int, default=100, help="the model's detections per image")
    parser.add_argument("--worst-case-max", type=int, default=4096, help="largest size run at score 0")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each predict run")
    parser.add_argument("--note", default="", help="recorded with the result (e.g. machine load)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = write_model(tmp / "model.pth", args.detections)
        for side in args.sizes:
            image = write_image(tmp / f"image{side}.jpg", side)
            for score_thresh in (0.5, 0.0) if side <= args.worst_case_max else (0.5,):
                out_dir = tmp / f"out{side}-{score_thresh}"
                run = measure(checkpoint, image, out_dir, score_thresh, args.threads)
                row = {"side": side, "pixels": side * side, "score_thresh": score_thresh, **run}
                print(json.dumps(row), file=sys.stderr)
                rows.append(row)
                for path in out_dir.glob("*"):
                    path.unlink()

    result = {
        "setting": (
            f"python -m fnoise_maskrcnn.predict --device cpu, OMP_NUM_THREADS={args.threads}; random "
            f"MobileNetV3-FPN Mask R-CNN, min_size {MIN_SIZE}, max_size {MAX_SIZE}, up to "
            f"{args.detections} detections per image above its own 0.05 score; synthetic JPEG images"
        ),
        "target": "peak RSS <= 4 GiB at 8000 x 8000 (issue 13)",
        "before": (
            "issue 13: predict on an 8000 x 8000 image died at 10.9 GB RSS (masks above the model's 0.05 "
            "pasted before --score-thresh)"
        ),
        "note": args.note,
        "runs": rows,
    }
    print(json.dumps(result, indent=2))
    print(f"wrote {write_result('predict_memory', result)}")


if __name__ == "__main__":
    main()
