"""Check a COCO instances dataset (annotation file + image folder) before training on it.

Used by ``python -m fnoise_maskrcnn.data.validate ANN_FILE IMAGE_DIR``. Reports, without training
anything: problems that make the dataset unusable (see :mod:`.annotations`), missing, unreadable or
truncated image files, images whose real size (after EXIF orientation) differs from the
``width``/``height`` in the file, and the annotations that will be left out of the training targets.
It also notes (without counting it as a problem) images with 16-bit, 32-bit integer or float pixels,
which every job converts to 8 bits by scaling (:func:`fnoise_maskrcnn.io.images.to_rgb`).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from .annotations import DatasetError, ProblemTally, check_annotations, load_annotation_file

#: PIL modes of more than 8 bits per pixel, scaled to 8 bits when read (see ``io.images.to_rgb``).
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


@dataclass
class ValidationReport:
    """What :func:`validate_coco` found. ``errors`` are one line each; ``ok`` is True when there are none."""

    ann_file: Path
    image_dir: Path
    num_images: int = 0
    num_annotations: int = 0
    num_crowd: int = 0
    num_categories: int = 0
    num_empty_images: int = 0
    loaded: bool = False
    errors: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    skip_examples: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # informational, not problems

    @property
    def ok(self) -> bool:
        return not self.errors

    def lines(self) -> list[str]:
        """The report as printed by the command line."""
        if not self.loaded:
            return [f"error: {e}" for e in self.errors]
        out = [
            f"{self.ann_file}: {self.num_images} images ({self.num_empty_images} without instances), "
            f"{self.num_annotations} annotations ({self.num_crowd} crowd), {self.num_categories} categories",
        ]
        out += [
            f"skipped: {n} annotations with {reason} (first: {self.skip_examples[reason]})"
            for reason, n in sorted(self.skipped.items())
        ]
        out += [f"note: {note}" for note in self.notes]
        out += [f"error: {e}" for e in self.errors]
        out.append("OK" if self.ok else f"{len(self.errors)} kinds of problem: not usable as it is")
        return out


def _check_image(path: Path, width: int, height: int, decode: bool) -> tuple[tuple[str, str] | None, str]:
    """Return (problem kind and example, or None when the file is fine; the PIL mode, "" if unreadable)."""
    mode = ""
    try:
        with Image.open(path) as image:
            mode = image.mode  # from the header
            raw_size = image.size
            upright = ImageOps.exif_transpose(image) if decode else image
            if decode:
                upright.load()  # full decode: finds truncated and corrupt files
            size = upright.size if decode else _upright_size(image)
    except FileNotFoundError:
        return ("image files not found", str(path)), mode
    except (OSError, SyntaxError, ValueError) as e:
        return ("unreadable image files", f"{path} ({e})"), mode
    if size != (width, height):
        if raw_size == (width, height):
            return (
                "images whose size matches the file only without their EXIF rotation",
                f"{path} is {size[0]}x{size[1]}",
            ), mode
        return (
            "images whose size differs from the annotation file's width x height",
            f"{path} is {size[0]}x{size[1]}, the file says {width}x{height}",
        ), mode
    return None, mode


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """Size after EXIF orientation, from the header only (orientations 5-8 swap width and height)."""
    orientation = image.getexif().get(0x0112, 1)
    return image.size[::-1] if orientation in (5, 6, 7, 8) else image.size


def validate_coco(
    ann_file: str | os.PathLike, image_dir: str | os.PathLike, *, decode: bool = True
) -> ValidationReport:
    """Check an annotation file and its images; never raises for problems in the data, only reports them.

    Args:
        decode: fully decode every image (finds truncated files; slower). Otherwise read headers only.
    """
    report = ValidationReport(ann_file=Path(ann_file), image_dir=Path(image_dir))
    try:
        data = load_annotation_file(ann_file)
    except DatasetError as e:
        report.errors.append(str(e))
        return report
    report.loaded = True
    check = check_annotations(data, ann_file)
    report.errors += [f"{report.ann_file}: {e}" for e in check.errors]
    report.skipped, report.skip_examples = check.skipped, check.skip_examples
    report.num_images, report.num_annotations = len(data["images"]), len(data["annotations"])
    report.num_categories, report.num_crowd = len(data["categories"]), check.num_crowd
    report.num_empty_images = sum(
        1 for img in data["images"] if isinstance(img, dict) and img.get("id") not in check.usable
    )

    if not report.image_dir.is_dir():
        report.errors.append(f"{report.image_dir}: image folder not found")
        return report
    _check_images(report, data["images"], decode)
    return report


def _check_images(report: ValidationReport, images: list, decode: bool) -> None:
    """Check every listed image file: problems to ``report.errors``, high bit depths to ``report.notes``."""
    problems = ProblemTally()
    high_bit_depth: list[tuple[Path, str]] = []
    for img in images:
        if not (isinstance(img, dict) and isinstance(img.get("file_name"), str)):
            continue  # already reported by check_annotations
        path = report.image_dir / img["file_name"]
        found, mode = _check_image(path, img.get("width"), img.get("height"), decode)
        if found:
            problems.add(*found)
        if mode in HIGH_BIT_DEPTH_MODES:
            high_bit_depth.append((path, mode))
    report.errors += [f"{report.image_dir}: {line}" for line in problems.lines()]
    if high_bit_depth:
        (first, mode), n = high_bit_depth[0], len(high_bit_depth)
        report.notes.append(
            f"{report.image_dir}: {n} image{'s' if n > 1 else ''} with 16-bit, 32-bit integer or float "
            f"pixels, converted to 8-bit by scaling (first: {first}, mode {mode})"
        )
