"""Write the synthetic COCO-format instance segmentation dataset: shapes on textured backgrounds.

    python -m fnoise_maskrcnn.data.synthetic --out-dir DIR --num-images 64 --num-val-images 16 --seed 0

The command's flags and ``main``; the generator is :mod:`fnoise_maskrcnn.data.shapes`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .shapes import DEFAULT_MAX_INSTANCES, DEFAULT_NUM_TRAIN, DEFAULT_SIZE_RANGE, generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fnoise_maskrcnn.data.synthetic",
        description="Write a synthetic COCO-format instance segmentation dataset (shapes on textures).",
    )
    parser.add_argument(
        "--out-dir", required=True, type=Path, help="output directory (images/, train.json, val.json)"
    )
    parser.add_argument("--num-images", type=int, default=DEFAULT_NUM_TRAIN, help="number of train images")
    parser.add_argument("--num-val-images", type=int, default=0, help="number of val images (0: no val.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--min-size", type=int, default=DEFAULT_SIZE_RANGE[0], help="smallest image side (px)"
    )
    parser.add_argument("--max-size", type=int, default=DEFAULT_SIZE_RANGE[1], help="largest image side (px)")
    parser.add_argument(
        "--max-instances", type=int, default=DEFAULT_MAX_INSTANCES, help="most shapes per image"
    )
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error("--num-images must be >= 1")
    if args.num_val_images < 0:
        parser.error("--num-val-images must be >= 0")
    if not 16 <= args.min_size <= args.max_size:
        parser.error("--min-size/--max-size must satisfy 16 <= min <= max")
    if args.max_instances < 1:
        parser.error("--max-instances must be >= 1")
    try:
        splits = generate(
            args.out_dir,
            args.num_images,
            args.seed,
            num_val_images=args.num_val_images,
            size_range=(args.min_size, args.max_size),
            max_instances=args.max_instances,
        )
    except OSError as e:
        print(f"error: {args.out_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(
        f"wrote {splits.train_ann}"
        + (f" and {splits.val_ann}" if splits.val_ann else "")
        + f" (images in {splits.train_images})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
