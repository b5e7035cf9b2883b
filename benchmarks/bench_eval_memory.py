"""Peak memory of training's validation AP (``engine.evaluate_ap``) against torchvision's own forward.

Training evaluates every ``--eval-every`` epochs. Early in a from-scratch run the model keeps up to
``box_detections_per_img`` detections per image (200 in ``cpu-scratch``), and torchvision's eval forward
pastes all of an image's masks at full image size as float32, listed and then stacked: ``8 * N * H * W``
bytes, 10 GB for 200 detections on one 2048 x 1536 image. ``evaluate_ap`` gets the same detections from
``fnoise_maskrcnn.inference.predict_batch``, which pastes one mask at a time as ``bool``.

Each row is one fresh process (so ``ru_maxrss`` is that evaluation's peak): the model of ``--recipe`` at
initialisation (seed 0; before training, when the most detections are kept), the validation set of
``--data-path`` with the validation transforms, and either

- ``package``: ``fnoise_maskrcnn.engine.evaluate_ap``, what training runs;
- ``torchvision``: ``model(images)`` per batch, then the same COCO results and COCOeval.

At the same batch size both must give the same APs; the benchmark fails otherwise (batches are padded
to their largest image, so APs differ a little between batch sizes). Rows run one after the other, never two
at once.

    python benchmarks/bench_eval_memory.py --data-path $FNOISE_MASKRCNN_DATA/balloon \\
        [--recipe cpu-scratch] [--batch-sizes 1 4] [--torchvision-batch-sizes 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from _results import write_result


def _evaluate(mode: str, data_path: str, recipe: str, batch_size: int) -> dict:
    """One evaluation in this process: bbox and segm AP, seconds, and this process's peak RSS."""
    from fnoise_maskrcnn.arguments import parse
    from fnoise_maskrcnn.data import CocoInstances, build_dataloader, build_transforms
    from fnoise_maskrcnn.engine import evaluate_ap
    from fnoise_maskrcnn.engine.run import resolve_data
    from fnoise_maskrcnn.evaluation.coco import evaluate_coco, predictions_to_coco_results
    from fnoise_maskrcnn.models import build_model

    config = parse(["--recipe", recipe, "--data-path", data_path]).config
    spec = resolve_data(config)
    val_set = CocoInstances(spec.val_images, spec.val_ann, build_transforms(False))
    loader = build_dataloader(val_set, batch_size=batch_size, train=False)
    torch.manual_seed(0)
    model = build_model(config.model.build_config(len(val_set.categories) + 1)).eval()
    categories = val_set.categories
    start = time.perf_counter()
    if mode == "package":
        metrics = evaluate_ap(model, loader, torch.device("cpu"), categories, val_set.coco)
    else:
        results = []
        with torch.inference_mode():
            for images, targets in loader:
                for output, target in zip(model(list(images)), targets):
                    results += predictions_to_coco_results([output], [int(target["image_id"])], categories)
        metrics = evaluate_coco(val_set.coco, results, cat_ids=[int(c["id"]) for c in categories])
    seconds = time.perf_counter() - start
    return {
        "bbox_AP": metrics["bbox"]["AP"],
        "segm_AP": metrics["segm"]["AP"],
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def _run_child(mode: str, args: argparse.Namespace, batch_size: int) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--data-path", args.data_path]
    command += ["--recipe", args.recipe, "--batch-sizes", str(batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {"mode": mode, "batch_size": batch_size, "failed": tail[0]}
    return {"mode": mode, "batch_size": batch_size, **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-path", required=True, help="a train.json/val.json/images folder")
    parser.add_argument("--recipe", default="cpu-scratch")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4], help="for evaluate_ap")
    parser.add_argument(
        "--torchvision-batch-sizes", type=int, nargs="*", default=[1], help="for torchvision's forward"
    )
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each evaluation")
    parser.add_argument("--note", default="", help="recorded with the result (e.g. machine load)")
    parser.add_argument("--child", choices=["package", "torchvision"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_evaluate(args.child, args.data_path, args.recipe, args.batch_sizes[0])))
        return

    plan = [("package", b) for b in args.batch_sizes] + [
        ("torchvision", b) for b in args.torchvision_batch_sizes
    ]
    rows = []
    for mode, batch_size in plan:
        row = _run_child(mode, args, batch_size)
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    for batch_size in {r["batch_size"] for r in rows}:  # padding a batch changes the detections a little
        aps = {
            (r["bbox_AP"], r["segm_AP"]) for r in rows if r["batch_size"] == batch_size and "failed" not in r
        }
        if len(aps) > 1:
            raise SystemExit(f"error: the evaluations at batch size {batch_size} disagree: {sorted(aps)}")
    result = {
        "setting": (
            f"validation AP of {Path(args.data_path).name} with the {args.recipe} model at initialisation "
            f"(seed 0), one fresh process per row, OMP_NUM_THREADS={args.threads}; package = "
            "engine.evaluate_ap (what training runs), torchvision = model(images) + the same COCOeval"
        ),
        "before": (
            "training's own log (references/fnoise/study-balloon, 2026-12-05): max rss 11.3-12.5 GB from "
            "the first evaluation of a balloon cpu-scratch run (validation batch 4), up from 4.1-4.3 GB "
            "while training"
        ),
        "note": args.note,
        "runs": rows,
    }
    print(json.dumps(result, indent=2))
    print(f"wrote {write_result('eval_memory', result)}")


if __name__ == "__main__":
    main()
