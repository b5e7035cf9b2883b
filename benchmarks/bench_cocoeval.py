"""pycocotools against faster-coco-eval on the same detections: identical numbers? how much faster?

The ground truth is coco128's val.json (``$FNOISE_MASKRCNN_DATA/coco128``, 128 images, 80 categories,
crowd annotations included) or, when absent, the synthetic dataset. The detections are made from
the ground truth so that every COCOeval code path is exercised: each object is found with
probability 0.8 with a jittered box, a mask shifted by a few pixels, a random score and sometimes a
wrong category, plus random false positives. Both backends evaluate the same results, interleaved,
``--repeats`` times; the JSON output has the median seconds per backend and whether the 12 summary
statistics and the full precision arrays are identical.

    python benchmarks/bench_cocoeval.py [--ann VAL.json] [--repeats 3]
"""

import argparse
import contextlib
import copy
import functools
import io
import json
import os
import statistics
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from _results import write_result
from _timing import interleaved_seconds
from fnoise_maskrcnn.evaluation.coco import BACKENDS, run_cocoeval

_DATA_DIR = os.environ.get("FNOISE_MASKRCNN_DATA")
COCO128_VAL = Path(_DATA_DIR) / "coco128" / "val.json" if _DATA_DIR else None


def make_detections(dataset: dict, seed: int = 0) -> list:
    """COCO results made from the ground truth: jittered true positives, wrong labels, false positives."""
    rng = np.random.default_rng(seed)
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(dataset)
        coco.createIndex()
    cat_ids = sorted(coco.getCatIds())
    results = []
    for ann in dataset["annotations"]:
        if ann.get("iscrowd", 0) or rng.random() > 0.8:
            continue
        img = coco.imgs[ann["image_id"]]
        h, w = img["height"], img["width"]
        x, y, bw, bh = ann["bbox"]
        jitter = rng.normal(0, 0.08, 4) * np.array([bw, bh, bw, bh])
        box = [
            max(0.0, x + jitter[0]),
            max(0.0, y + jitter[1]),
            max(1.0, bw + jitter[2]),
            max(1.0, bh + jitter[3]),
        ]
        mask = coco.annToMask(ann)
        dy, dx = rng.integers(-3, 4, 2)
        mask = np.roll(np.roll(mask, dy, 0), dx, 1)
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        category = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(cat_ids))
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": category,
                "bbox": box,
                "score": float(rng.random()),
                "segmentation": rle,
            }
        )
    for img in dataset["images"]:
        for _ in range(rng.integers(0, 4)):
            h, w = img["height"], img["width"]
            bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            mask = np.zeros((h, w), dtype=np.uint8)
            mask[int(y) : int(y + bh), int(x) : int(x + bw)] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            results.append(
                {
                    "image_id": img["id"],
                    "category_id": int(rng.choice(cat_ids)),
                    "bbox": [x, y, bw, bh],
                    "score": float(rng.random() * 0.5),
                    "segmentation": rle,
                }
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    has_coco128 = COCO128_VAL is not None and COCO128_VAL.is_file()
    parser.add_argument("--ann", type=Path, default=COCO128_VAL if has_coco128 else None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.ann is None:
        from fnoise_maskrcnn.data.shapes import default_dataset

        args.ann = default_dataset().val_ann
    dataset = json.loads(args.ann.read_text())
    results = make_detections(dataset)
    cat_ids = sorted(c["id"] for c in dataset["categories"])
    img_ids = sorted(i["id"] for i in dataset["images"])

    outputs: dict[str, dict] = {}

    def evaluation(backend: str) -> None:
        outputs[backend] = {
            iou_type: run_cocoeval(dataset, results, iou_type, cat_ids, img_ids, backend)
            for iou_type in ("bbox", "segm")
        }

    jobs = {backend: functools.partial(evaluation, backend) for backend in BACKENDS}
    seconds = interleaved_seconds(jobs, args.repeats, warmup=0)  # interleaved: load affects both alike
    reference, fast = outputs["pycocotools"], outputs["faster-coco-eval"]
    report = {
        "ann": str(args.ann),
        "images": len(img_ids),
        "detections": len(results),
        "repeats": args.repeats,
        "median_seconds": {b: statistics.median(s) for b, s in seconds.items()},
        "speedup": statistics.median(seconds["pycocotools"]) / statistics.median(seconds["faster-coco-eval"]),
    }
    for iou_type in ("bbox", "segm"):
        ref_stats, ref_precision = reference[iou_type]
        fast_stats, fast_precision = fast[iou_type]
        report[iou_type] = {
            "stats_identical": bool(np.array_equal(ref_stats, fast_stats)),
            "stats_max_abs_diff": float(np.abs(np.asarray(ref_stats) - np.asarray(fast_stats)).max()),
            "precision_identical": bool(np.array_equal(ref_precision, fast_precision)),
            "precision_max_abs_diff": float(np.abs(ref_precision - fast_precision).max()),
            "AP_pycocotools": float(ref_stats[0]),
            "AP_faster_coco_eval": float(fast_stats[0]),
        }
    print(json.dumps(report, indent=2))
    print(f"wrote {write_result('cocoeval', report)}")


if __name__ == "__main__":
    main()
