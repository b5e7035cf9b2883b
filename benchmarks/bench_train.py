"""Training throughput on the CPU: our engine against torchvision's ``references/detection/train.py``,
and bf16 autocast, channels_last and thread settings for one Mask R-CNN train step.

torchvision's references are not part of the torchvision package: fetch them yourself and pass their
folder with ``--references``. They run as they are, in a subprocess; the only thing the launcher changes
is the model's ``min_size``/``max_size`` (which the references do not expose), so that both sides
train the same model at the same image size. Nothing of their code is imported here.

Both sides train ``maskrcnn_resnet50_fpn`` from scratch on the same images (COCO layout built in a
temporary folder from ``--data``), batch 2, SGD, no workers, one epoch of ``--iters`` iterations; per-
iteration times come from our ``metrics.jsonl`` and from the references' progress lines (running
averages, unrolled). The first iteration of each run is left out. Runs alternate (ours, theirs, ours,
theirs, ...), so that load from other processes affects both alike; the figure is the ratio of medians.

Usage::

    python benchmarks/bench_train.py --references VISION/references/detection \\
        --data $FNOISE_MASKRCNN_DATA/coco128 --size 512 --iters 4 --repeats 2 --variant-steps 2

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _results import write_result

REPO = Path(__file__).resolve().parents[1]
_DATA_DIR = os.environ.get("FNOISE_MASKRCNN_DATA")
DEFAULT_DATA = Path(_DATA_DIR) / "coco128" if _DATA_DIR else None

LAUNCHER = """
import runpy, sys, torchvision

size = int(sys.argv[1])
get_model = torchvision.models.get_model
def sized_get_model(name, **kwargs):
    return get_model(name, min_size=size, max_size=size, **kwargs)
torchvision.models.get_model = sized_get_model
references = sys.argv[2]
sys.path.insert(0, references)
sys.argv = [references + "/train.py", *sys.argv[3:]]
runpy.run_path(references + "/train.py", run_name="__main__")
"""


def build_coco_layout(
    source: Path, root: Path, num_train: int, num_val: int, one_image: bool = False
) -> None:
    """``root/annotations/instances_{train,val}2017.json`` and ``root/{train,val}2017`` from a COCO-format
    set.

    Only images with a usable (non-crowd, positive-area) annotation are taken, so that both trainers,
    which treat empty images differently, see the same images.
    """
    ann_file = source / "train.json" if (source / "train.json").is_file() else source / "annotations.json"
    data = json.loads(ann_file.read_text())
    usable = {a["image_id"] for a in data["annotations"] if not a.get("iscrowd") and a.get("area", 1) > 1}
    images = [img for img in sorted(data["images"], key=lambda i: i["id"]) if img["id"] in usable]
    if one_image:
        # Copies of one image under new ids: both trainers then see identical batches whatever their
        # shuffling, so per-iteration times compare the engines, not the images drawn.
        first = images[0]
        anns = [a for a in data["annotations"] if a["image_id"] == first["id"]]
        images = [{**first, "id": k + 1} for k in range(num_train + num_val)]
        data = {
            **data,
            "annotations": [
                {**a, "id": k * len(anns) + j + 1, "image_id": k + 1}
                for k in range(len(images))
                for j, a in enumerate(anns)
            ],
        }
    if len(images) < num_train + num_val:
        raise SystemExit(f"error: {ann_file}: {len(images)} usable images, need {num_train + num_val}")
    (root / "annotations").mkdir(parents=True)
    for split, subset in (("train", images[:num_train]), ("val", images[num_train : num_train + num_val])):
        ids = {img["id"] for img in subset}
        split_data = {
            **data,
            "images": subset,
            "annotations": [a for a in data["annotations"] if a["image_id"] in ids],
        }
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(split_data))
        (root / f"{split}2017").symlink_to((source / "images").resolve())


def run_ours(root: Path, out: Path, size: int, env: dict) -> list[float]:
    command = [
        sys.executable,
        "-m",
        "fnoise_maskrcnn.train",
        "--data-path",
        str(root),
        "--model",
        "resnet50",
        "--min-size",
        str(size),
        "--max-size",
        str(size),
        "-b",
        "2",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--lr",
        "0.0025",
        "--print-freq",
        "1",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["time"] for r in records if r["type"] == "iter"]


def run_references(
    references: Path, root: Path, out: Path, size: int, launcher: Path, env: dict
) -> list[float]:
    command = [
        sys.executable,
        str(launcher),
        str(size),
        str(references),
        "--data-path",
        str(root),
        "--dataset",
        "coco",
        "--model",
        "maskrcnn_resnet50_fpn",
        "--device",
        "cpu",
        "-b",
        "2",
        "--epochs",
        "1",
        "-j",
        "0",
        "--lr",
        "0.0025",
        "--print-freq",
        "1",
        "--output-dir",
        str(out),
    ]
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=references)
    # "Epoch: [0]  [k/n]  eta: ...  time: <running mean of the first k+1 iterations>  data: ..."
    means = [float(m) for m in re.findall(r"Epoch: \[0\]\s+\[\s*\d+/\d+\].*?time: ([0-9.]+)", result.stdout)]
    return [(k + 1) * m - k * (means[k - 1] if k else 0.0) for k, m in enumerate(means)]


def engine_vs_references(args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ours: list[float] = []
    theirs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        root = tmp_path / "coco"
        build_coco_layout(args.data, root, 2 * args.iters, 2, one_image=args.one_image)
        launcher = tmp_path / "launch_references.py"
        launcher.write_text(LAUNCHER)
        for repeat in range(args.repeats):
            ours += run_ours(root, tmp_path / f"ours{repeat}", args.size, env)[1:]
            theirs += run_references(
                args.references, root, tmp_path / f"refs{repeat}", args.size, launcher, env
            )[1:]
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    return {
        "setting": f"maskrcnn_resnet50_fpn from scratch, {args.size}x{args.size}, batch 2, SGD, workers 0, "
        "CPU" + (", copies of one image" if args.one_image else ""),
        "ours_s_per_iter": [round(t, 3) for t in ours],
        "references_s_per_iter": [round(t, 3) for t in theirs],
        "ours_images_per_s": round(2 / ours_median, 4),
        "references_images_per_s": round(2 / theirs_median, 4),
        "speedup_vs_references": round(theirs_median / ours_median, 3),
    }


def cpu_variants(args: argparse.Namespace) -> dict:
    """Median seconds of one train step (forward, backward, SGD step) per setting, interleaved."""
    from fnoise_maskrcnn.data import CocoInstances, collate_fn
    from fnoise_maskrcnn.models import build_model

    data = CocoInstances(args.data / "images", args.data / "train.json", drop_empty=True)
    images, targets = collate_fn([data[0], data[1]])
    torch.manual_seed(0)
    config = {
        "arch": "resnet50",
        "num_classes": len(data.categories) + 1,
        "model_kwargs": {"min_size": args.size, "max_size": args.size},
    }
    models = {"default": build_model(config)}
    models["channels_last"] = build_model(config).to(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    variants = {
        "fp32": (models["default"], False, threads),
        "bf16_autocast": (models["default"], True, threads),
        "channels_last": (models["channels_last"], False, threads),
        "fp32_1_thread": (models["default"], False, 1),
    }
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for name, m in models.items()}

    def step(model: torch.nn.Module, bf16: bool, num_threads: int) -> float:
        torch.set_num_threads(num_threads)
        optimizer = optimizers["channels_last" if model is models["channels_last"] else "default"]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = sum(model(list(images), list(targets)).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        torch.set_num_threads(threads)
        return elapsed

    for model in models.values():
        model.train()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for setting in variants.values():  # warm-up, not timed
        step(*setting)
    for _ in range(args.variant_steps):
        for name, setting in variants.items():
            times[name].append(step(*setting))
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "setting": f"one train step, maskrcnn_resnet50_fpn from scratch, {args.size}x{args.size}, batch 2, "
        f"{threads} threads unless stated",
        "seconds": {name: [round(t, 3) for t in ts] for name, ts in times.items()},
        "median_s": {name: round(m, 3) for name, m in medians.items()},
        "speedup_vs_fp32": {name: round(medians["fp32"] / m, 3) for name, m in medians.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--references", type=Path, help="torchvision's references/detection folder (skipped if absent)"
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="COCO-format set with train.json and images/"
    )
    parser.add_argument("--size", type=int, default=512, help="min_size = max_size of the model")
    parser.add_argument("--iters", type=int, default=4, help="iterations per training run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each trainer, alternating")
    parser.add_argument("--variant-steps", type=int, default=2, help="timed steps per CPU setting (0: skip)")
    parser.add_argument(
        "--one-image",
        action="store_true",
        help="train both on copies of one image, so that their batches are identical",
    )
    args = parser.parse_args()
    if args.data is None:
        parser.error("give --data, or set FNOISE_MASKRCNN_DATA to the folder holding coco128/")
    if not (args.data / "train.json").is_file():
        parser.error(
            f"--data {args.data}: no train.json (generate one with python -m fnoise_maskrcnn.data.synthetic)"
        )
    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    if args.references is not None:
        if not (args.references / "train.py").is_file():
            parser.error(f"--references {args.references}: no train.py there")
        report["engine_vs_references"] = engine_vs_references(args)
    if args.variant_steps > 0:
        report["cpu_variants"] = cpu_variants(args)
    print(json.dumps(report, indent=2))
    print(f"wrote {write_result('train_throughput', report)}")


if __name__ == "__main__":
    main()
