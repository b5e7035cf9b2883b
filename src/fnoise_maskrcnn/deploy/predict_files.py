"""Predicting on image files: PNG overlays and a COCO results file (the library side of ``predict``).

:func:`predict_files` writes ``<out_dir>/<image stem>.png`` (the image with masks, boxes and "name score"
labels) for each image and a results file of COCO results entries (``image_id``, original
``category_id``, ``bbox`` XYWH, ``score``, RLE ``segmentation``) plus the ``file_name`` of the image.
Image ids are the images' positions (1-based) or given (e.g. by :func:`image_ids_from_annotations`), so
the file can be scored with pycocotools directly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..device import is_out_of_memory, resolve_device
from ..evaluation.coco import predictions_to_coco_results
from ..inference import DEFAULT_MAX_PIXELS, draw_overlay, png_bytes, predict_batch
from ..io.atomic import write_bytes_atomic
from ..io.images import ImageError, ImageTooLargeError, read_image_tensor
from ..io.model_io import model_from_checkpoint

__all__ = ["PredictReport", "predict_files", "output_names", "image_ids_from_annotations"]


def output_names(images: Sequence[Path]) -> list[str]:
    """Overlay file names: ``<stem>.png``, with ``-<position>`` appended where stems collide."""
    stems = [p.stem for p in images]
    duplicated = {s for s in stems if stems.count(s) > 1}
    return [f"{s}-{i + 1}.png" if s in duplicated else f"{s}.png" for i, s in enumerate(stems)]


def image_ids_from_annotations(images: Sequence[Path], ann_file: Path) -> list[int]:
    """The id of each image in a COCO annotation file, matched on the file name (without folders).

    Raises:
        ValueError: the file is unreadable, or an image is not listed in it (one-line message).
    """
    try:
        data = json.loads(ann_file.read_text())
        by_name = {Path(img["file_name"]).name: int(img["id"]) for img in data["images"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{ann_file}: not a readable COCO annotation file ({exc.__class__.__name__}: {exc})"
        ) from exc
    missing = [p for p in images if p.name not in by_name]
    if missing:
        raise ValueError(f"{missing[0]}: no image of that file name in {ann_file}")
    return [by_name[p.name] for p in images]


@dataclass
class PredictReport:
    """What :func:`predict_files` did.

    Attributes:
        results: the COCO results entries written to the results file.
        skipped: ``(image, one-line reason)`` of every image that could not be predicted.
    """

    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def skip(self, path: Path, reason: str) -> None:
        """Records ``path`` as skipped, with a one-line warning on stderr."""
        self.skipped.append((path, reason))
        print(f"warning: {reason}; skipped", file=sys.stderr)


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _decoded_batches(
    images: Sequence[Path], batch_size: int, max_pixels: int | None
) -> Iterator[list[tuple[int, torch.Tensor | str]]]:
    """``(position, image or reason)`` for each batch of ``images``, decoded by :func:`_read` in a
    background thread one batch ahead of the caller."""
    batches = _batches(list(range(len(images))), batch_size)

    def decode(indices: Sequence[int]) -> list[tuple[int, torch.Tensor | str]]:
        return [(i, _read(images[i], max_pixels)) for i in indices]

    with ThreadPoolExecutor(max_workers=1) as decoder:
        pending = decoder.submit(decode, batches[0])
        for b in range(len(batches)):
            decoded = pending.result()
            if b + 1 < len(batches):
                pending = decoder.submit(decode, batches[b + 1])
            yield decoded
            del decoded


def _read(path: Path, max_pixels: int | None) -> torch.Tensor | str:
    """The image as ``uint8 [3, H, W]`` (a quarter of float32's memory while it waits for the model), or the
    one-line reason it cannot be read."""
    try:
        return read_image_tensor(path, max_pixels=max_pixels, dtype=torch.uint8)
    except ImageTooLargeError as exc:
        return f"{exc} (--max-pixels)"
    except ImageError as exc:
        return str(exc)
    except MemoryError:
        return f"{path}: out of memory while decoding the image; lower --max-pixels to skip such images"


def _out_of_memory(paths: Sequence[Path], pixels: Sequence[torch.Tensor]) -> str:
    sizes = ", ".join(f"{p} ({int(t.shape[2])}x{int(t.shape[1])})" for p, t in zip(paths, pixels))
    largest = max(int(t.shape[1]) * int(t.shape[2]) for t in pixels)
    hint = f"--max-pixels below {largest}" + (" or --batch-size 1" if len(pixels) > 1 else "")
    return f"{sizes}: out of memory while predicting; try {hint}"


def _write_image(
    image: torch.Tensor,
    output: dict[str, torch.Tensor],
    categories: Sequence[Mapping[str, Any]],
    overlay: Path,
    source: Path,
    image_id: int,
) -> list[dict[str, Any]]:
    """Writes the overlay of one image; returns its COCO results entries, with the image's ``file_name``."""
    write_bytes_atomic(png_bytes(draw_overlay(image, output, categories)), overlay)
    entries = predictions_to_coco_results([output], [image_id], categories)
    for entry in entries:
        entry["file_name"] = source.name
    print(f"{source}: {len(output['scores'])} instances -> {overlay}")
    return entries


def predict_files(
    checkpoint: Path,
    images: Sequence[Path],
    out_dir: Path,
    *,
    score_thresh: float = 0.5,
    batch_size: int = 4,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    device: str | None = "auto",
    image_ids: Sequence[int] | None = None,
    results_name: str = "results.json",
) -> PredictReport:
    """Predicts on ``images`` and writes overlays and the results file (also when some images fail).

    Images are decoded in a background thread one batch ahead of the model. An image that cannot be read,
    is over ``max_pixels`` or runs out of memory is skipped with a one-line warning on stderr and listed
    in the report; the others are predicted and written.

    Raises:
        CheckpointError: the checkpoint cannot be loaded.
        OSError: the output folder or a file in it cannot be written.
    """
    torch_device = resolve_device(device)
    model, ckpt = model_from_checkpoint(checkpoint, device=torch_device)
    categories = ckpt["categories"]
    image_ids = list(image_ids) if image_ids is not None else list(range(1, len(images) + 1))
    names = output_names(images)
    out_dir.mkdir(parents=True, exist_ok=True)

    report = PredictReport()
    for decoded in _decoded_batches(images, batch_size, max_pixels):
        for i, pixels in decoded:
            if isinstance(pixels, str):
                report.skip(images[i], pixels)
        readable = [(i, pixels) for i, pixels in decoded if not isinstance(pixels, str)]
        del decoded
        if not readable:
            continue
        indices, pixels = [i for i, _ in readable], [p for _, p in readable]
        del readable
        try:
            outputs = predict_batch(model, pixels, score_thresh, torch_device)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            reason = _out_of_memory([images[i] for i in indices], pixels)
            for i in indices:
                report.skip(images[i], reason)
            continue
        for i, image, output in zip(indices, pixels, outputs):
            entries = _write_image(image, output, categories, out_dir / names[i], images[i], image_ids[i])
            report.results.extend(entries)
        del pixels, outputs
    write_bytes_atomic(json.dumps(report.results).encode(), out_dir / results_name)
    done = len(images) - len(report.skipped)
    print(f"{len(report.results)} results from {done} images -> {out_dir / results_name}")
    return report
