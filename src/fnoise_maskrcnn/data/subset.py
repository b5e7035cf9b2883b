"""Cut a self-contained COCO-format dataset out of a larger one: some categories, some images, splits.

    python -m fnoise_maskrcnn.data.subset --ann instances_val2017.json --images val2017/ \\
        --categories bus [--max-images 110] [--split train=0.8,val=0.1,test=0.1] [--seed 0] --out-dir DIR

Writes ``DIR/images/`` (copies, or links with ``--link``) and one ``DIR/<split>.json`` per split and prints
a table of images and instances per category and split. The command's flags and ``main``; the library is
:mod:`fnoise_maskrcnn.data.subsetting` (selection, streaming, splits). Imports no torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .annotations import DatasetError
from .subsetting import format_table, make_subset, parse_split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fnoise_maskrcnn.data.subset",
        description="Write a self-contained COCO-format subset (categories, first N images, splits).",
    )
    parser.add_argument(
        "--ann", required=True, type=Path, help="COCO instances JSON, e.g. instances_val2017.json"
    )
    parser.add_argument("--images", required=True, type=Path, help="its image folder, e.g. val2017/")
    parser.add_argument(
        "--categories",
        nargs="+",
        metavar="NAME",
        help="category names to keep (comma- or space-separated); default: all",
    )
    parser.add_argument("--max-images", type=int, help="keep the first N selected images by image id")
    parser.add_argument(
        "--split", default="train=1", help="NAME=FRACTION,... summing to 1 (default: train=1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split shuffle")
    parser.add_argument(
        "--link",
        choices=("copy", "hardlink", "symlink"),
        default="copy",
        help="how images get into OUT_DIR/images (hardlink falls back to copy)",
    )
    parser.add_argument("--out-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        split = parse_split(args.split)
    except ValueError as e:
        parser.error(f"--split: {e}")
    if args.max_images is not None and args.max_images < 1:
        parser.error("--max-images must be >= 1")
    categories = [n.strip() for item in args.categories or [] for n in item.split(",") if n.strip()] or None
    try:
        result = make_subset(
            args.ann,
            args.images,
            args.out_dir,
            categories=categories,
            max_images=args.max_images,
            split=split,
            seed=args.seed,
            link=args.link,
        )
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or args.out_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(format_table(result))
    print("wrote " + ", ".join(str(p) for p in result.ann_files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
