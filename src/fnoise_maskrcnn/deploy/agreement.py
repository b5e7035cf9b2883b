"""Whether two models' detections of one image agree: eager PyTorch against an exported copy.

Exported (traced or scripted) torchvision models compute the resized image size in float32, eager
PyTorch in float64; :func:`exported_resize` gives the exported rule, so that the images where the two
differ by a pixel can be told apart.

A detection is matched when the other output has one with the same label, a box within ``box_atol``
pixels on every coordinate and a score within ``score_atol``; matched soft masks must agree within
``mask_mean_atol`` on average. Detections scoring within ``score_margin`` of the model's box score
threshold may be kept by one runtime and dropped by the other, so only stronger ones must be matched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Tolerance", "compare_detections", "exported_resize"]


@dataclass(frozen=True)
class Tolerance:
    """How close two detections must be to count as the same (defaults: what the export tests use)."""

    score_margin: float = 0.03
    box_atol: float = 1.0  # px: PyTorch rescales boxes with float64 ratios, exported graphs with float32
    score_atol: float = 5e-3
    mask_mean_atol: float = 5e-3  # mean |difference| of two soft masks (values in [0, 1])


def _numpy(output: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in output.items()}


def compare_detections(
    expected: Mapping[str, Any], actual: Mapping[str, Any], score_thresh: float, tol: Tolerance = Tolerance()
) -> tuple[int, list[str]]:
    """Matches the detections of one image both ways.

    Args:
        expected, actual: ``boxes [N, 4]``, ``labels [N]``, ``scores [N]``, ``masks [N, 1, H, W]`` as
            tensors or arrays (torchvision's output, or an ONNX session's four outputs by name).
        score_thresh: the model's box score threshold.

    Returns:
        ``(matched, problems)``: how many of ``expected``'s strong detections have a partner, and one line
        per detection (of either side) without one or with a different mask; empty when they agree.
    """
    exp, act = _numpy(expected), _numpy(actual)
    strong = score_thresh + tol.score_margin
    matched, problems = 0, []
    for side, a, b in (("expected", exp, act), ("actual", act, exp)):
        for i in np.flatnonzero(a["scores"] >= strong):
            partners = np.flatnonzero(
                (b["labels"] == a["labels"][i])
                & (np.abs(b["boxes"] - a["boxes"][i]).max(axis=1) <= tol.box_atol)
                & (np.abs(b["scores"] - a["scores"][i]) <= tol.score_atol)
            )
            what = f"{side} detection {i} (label {a['labels'][i]}, score {a['scores'][i]:.3f})"
            if not partners.size:
                problems.append(f"{what} has no partner")
            elif side == "expected":
                mask_diff = float(np.abs(a["masks"][i] - b["masks"][partners[0]]).mean())
                if mask_diff > tol.mask_mean_atol:
                    problems.append(f"{what}: masks differ by {mask_diff:.4f} on average")
                else:
                    matched += 1
    return matched, problems


def exported_resize(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The ``(H, W)`` a traced or scripted torchvision transform resizes a ``height x width`` image to:
    torchvision's rule (shorter side to ``min_size`` unless the longer would exceed ``max_size``) with
    the scale and the product in float32. Eager PyTorch computes both in float64, and where the two floor
    differently its size is one pixel off this one."""
    dims = torch.tensor([height, width], dtype=torch.float32)
    scale = torch.min(min_size / dims.min(), max_size / dims.max())
    return int(torch.floor(dims[0] * scale)), int(torch.floor(dims[1] * scale))
