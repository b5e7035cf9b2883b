"""Shared fixtures. ``synthetic_coco``: a small synthetic COCO dataset generated once per test session."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fnoise_maskrcnn.data import shapes

#: The real COCO-format sets next to the repository (see their SOURCE.md); tests skip when absent.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass(frozen=True)
class SyntheticCoco:
    """8 train + 4 val images of 128-192 px, 4 shape categories, in ``root/images``."""

    root: Path
    train_ann: Path
    train_images: Path
    val_ann: Path
    val_images: Path


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory) -> SyntheticCoco:
    splits = shapes.generate(
        tmp_path_factory.mktemp("synthetic_coco"), 8, seed=0, num_val_images=4, size_range=(128, 192)
    )
    return SyntheticCoco(
        splits.root, splits.train_ann, splits.train_images, splits.val_ann, splits.val_images
    )


@pytest.fixture(scope="session")
def inference_checkpoint(tmp_path_factory) -> Path:
    """A small random-weight Mask R-CNN checkpoint for the inference tests (see ``tests/_checkpoints.py``)."""
    from _checkpoints import write_test_checkpoint

    return write_test_checkpoint(tmp_path_factory.mktemp("inference_checkpoint") / "model.pth")


def write_fake_python(directory: Path, script: str) -> str:
    """An executable at ``directory/fake_python`` running ``script`` with this Python: a stand-in for
    ``python`` in tests of code that starts ``python -m fnoise_maskrcnn.train`` processes."""
    path = directory / "fake_python"
    path.write_text(f"#!{sys.executable}\n{script}")
    path.chmod(0o755)
    return str(path)


def write_images_only_coco(path: Path, names: list[str], width: int = 16, height: int = 12) -> Path:
    """A COCO annotation file listing ``names`` (all ``width x height``), one category, no annotations."""
    images = [{"id": i, "file_name": n, "width": width, "height": height} for i, n in enumerate(names, 1)]
    path.write_text(
        json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "thing"}]})
    )
    return path
