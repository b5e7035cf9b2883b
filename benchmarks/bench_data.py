"""Loader throughput (images/s): ``CocoInstances`` vs. a plain torchvision-references-style pipeline.

The reference-style pipeline is written here the way torchvision's ``references/detection`` builds
COCO data: ``CocoDetection`` returning raw annotation dicts, then a per-item conversion that drops
crowd annotations, turns XYWH boxes into clamped XYXY boxes, decodes each polygon/RLE with
pycocotools, drops degenerate boxes, and converts the PIL image to a float tensor.

Both run through the same ``DataLoader`` (batch size 2, detection collate) over the same dataset
(default: coco128 train, 103 images), with ``workers`` 0 and 2; the variants are interleaved pass by
pass and the medians of ``--passes`` full passes are compared. Both produce the same masks (checked).

    python benchmarks/bench_data.py [--data DIR] [--split train] [--passes 5]

``--data`` defaults to ``$FNOISE_MASKRCNN_DATA/coco128``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import time
from pathlib import Path

import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader
from torchvision.datasets import CocoDetection
from torchvision.transforms.v2 import functional as F

from _results import write_result
from fnoise_maskrcnn.data import CocoInstances, build_transforms, collate_fn

_DATA_DIR = os.environ.get("FNOISE_MASKRCNN_DATA")
DEFAULT_DATA = Path(_DATA_DIR) / "coco128" if _DATA_DIR else None


class ReferenceStyleCoco(CocoDetection):
    """CocoDetection + a ConvertCocoPolysToMask-style conversion, as in torchvision's references."""

    def __getitem__(self, index: int):
        image, anns = super().__getitem__(index)
        width, height = image.size
        anns = [a for a in anns if a.get("iscrowd", 0) == 0]
        boxes = torch.as_tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(min=0, max=width)
        boxes[:, 1::2].clamp_(min=0, max=height)
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        masks = []
        for a in anns:
            segmentation = a["segmentation"]
            if isinstance(segmentation, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation["counts"], list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = segmentation
            masks.append(torch.from_numpy(mask_utils.decode(rle)))
        masks = torch.stack(masks) if masks else torch.zeros((0, height, width), dtype=torch.uint8)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
        target = {
            "boxes": boxes[keep],
            "labels": labels[keep],
            "masks": masks[keep],
            "image_id": self.ids[index],
        }
        return F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True), target


def images_per_second(dataset, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=2, shuffle=False, num_workers=workers, collate_fn=collate_fn)
    start = time.perf_counter()
    count = sum(len(images) for images, _ in loader)
    return count / (time.perf_counter() - start)


def same_masks(ours, reference) -> bool:
    for i in range(len(ours)):
        a, b = ours[i][1], reference[i][1]
        if a["image_id"] != b["image_id"] or not torch.equal(a["masks"], b["masks"]):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="folder with images/ and <split>.json"
    )
    parser.add_argument("--split", default="train")
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    if args.data is None:
        parser.error("give --data, or set FNOISE_MASKRCNN_DATA to the folder holding coco128/")
    torch.set_num_threads(1)
    ann_file, image_dir = args.data / f"{args.split}.json", args.data / "images"
    variants = {
        "ours": CocoInstances(image_dir, ann_file, build_transforms(train=False)),
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress; stdout is for the JSON
        variants["reference_style"] = ReferenceStyleCoco(str(image_dir), str(ann_file))
    equal = same_masks(*variants.values())
    results: dict[str, dict[int, list[float]]] = {name: {0: [], 2: []} for name in variants}
    for workers in (0, 2):
        for dataset in variants.values():  # warm-up pass (file cache, worker start-up code paths)
            images_per_second(dataset, workers)
        for _ in range(args.passes):
            for name, dataset in variants.items():
                results[name][workers].append(images_per_second(dataset, workers))
    summary = {
        f"workers={w}": {
            **{f"{name}_images_per_s": round(statistics.median(results[name][w]), 2) for name in variants},
            "ratio_ours_over_reference": round(
                statistics.median(results["ours"][w]) / statistics.median(results["reference_style"][w]), 3
            ),
        }
        for w in (0, 2)
    }
    result = {
        "data": str(ann_file),
        "images": len(variants["ours"]),
        "passes": args.passes,
        "batch_size": 2,
        "torch_threads": 1,
        "same_masks": equal,
        **summary,
        "raw": results,
    }
    print(json.dumps(result, indent=1))
    print(f"wrote {write_result('data_loader', result)}")


if __name__ == "__main__":
    main()
