"""Command line: ``python -m fnoise_maskrcnn.data.validate ANN_FILE IMAGE_DIR [--no-decode]``.

Prints a summary, the annotations that will be skipped, notes (images with 16-bit, 32-bit integer or
float pixels, converted to 8-bit by scaling) and every problem (one line each, naming the file). Exit
status 0 when the dataset is usable, 2 when not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .validation import validate_coco


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fnoise_maskrcnn.data.validate",
        description="Check a COCO instances annotation file and its image folder before training.",
    )
    parser.add_argument("ann_file", type=Path, help="COCO instances JSON")
    parser.add_argument("image_dir", type=Path, help="folder the images' file_name are relative to")
    parser.add_argument(
        "--no-decode", action="store_true", help="read image headers only (faster; misses truncated files)"
    )
    args = parser.parse_args(argv)
    report = validate_coco(args.ann_file, args.image_dir, decode=not args.no_decode)
    for line in report.lines():
        print(line, file=sys.stdout if not line.startswith("error:") else sys.stderr)
    return 0 if report.ok else 2


if __name__ == "__main__":
    sys.exit(main())
