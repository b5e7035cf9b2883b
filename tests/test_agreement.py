"""compare_detections: which detections of two outputs count as the same, on hand-made outputs."""

from __future__ import annotations

import torch

from fnoise_maskrcnn.deploy.agreement import Tolerance, compare_detections, exported_resize


def _output(boxes, labels, scores, mask_values) -> dict[str, torch.Tensor]:
    masks = torch.stack([torch.full((1, 8, 8), float(v)) for v in mask_values])
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(labels),
        "scores": torch.tensor(scores),
        "masks": masks,
    }


EXPECTED = _output(
    [[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 3, 3]], [1, 2, 1], [0.9, 0.5, 0.06], [0.8, 0.6, 0.5]
)


def test_identical_and_nearly_identical_outputs_agree():
    assert compare_detections(EXPECTED, EXPECTED, 0.05) == (2, [])  # the 0.06 one is below 0.05 + 0.03
    near = _output([[0.5, 0, 10, 10.9], [5, 5, 20, 20]], [1, 2], [0.904, 0.5], [0.803, 0.6])
    assert compare_detections(EXPECTED, near, 0.05) == (2, [])  # the weak one may be missing


def test_a_moved_box_a_changed_score_label_or_mask_or_an_extra_detection_is_reported():
    moved = _output([[0, 0, 11.5, 10], [5, 5, 20, 20]], [1, 2], [0.9, 0.5], [0.8, 0.6])
    matched, problems = compare_detections(EXPECTED, moved, 0.05)
    assert matched == 1
    assert problems == [
        "expected detection 0 (label 1, score 0.900) has no partner",
        "actual detection 0 (label 1, score 0.900) has no partner",
    ]
    relabelled = _output([[0, 0, 10, 10], [5, 5, 20, 20]], [3, 2], [0.9, 0.5], [0.8, 0.6])
    assert len(compare_detections(EXPECTED, relabelled, 0.05)[1]) == 2
    rescored = _output([[0, 0, 10, 10], [5, 5, 20, 20]], [1, 2], [0.9, 0.51], [0.8, 0.6])
    assert len(compare_detections(EXPECTED, rescored, 0.05)[1]) == 2
    remasked = _output([[0, 0, 10, 10], [5, 5, 20, 20]], [1, 2], [0.9, 0.5], [0.8, 0.61])
    assert compare_detections(EXPECTED, remasked, 0.05) == (
        1,
        ["expected detection 1 (label 2, score 0.500): masks differ by 0.0100 on average"],
    )
    extra = _output(
        [[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40]], [1, 2, 1], [0.9, 0.5, 0.3], [0.8, 0.6, 0.1]
    )
    assert compare_detections(EXPECTED, extra, 0.05)[1] == [
        "actual detection 2 (label 1, score 0.300) has no partner"
    ]


def test_tolerances_are_settable():
    moved = _output([[0, 0, 11.5, 10], [5, 5, 20, 20]], [1, 2], [0.9, 0.5], [0.8, 0.6])
    assert compare_detections(EXPECTED, moved, 0.05, Tolerance(box_atol=2.0)) == (2, [])


def test_exported_resize_is_torchvisions_rule_in_float32():
    assert exported_resize(128, 160, 128, 160) == (128, 160)
    assert exported_resize(256, 320, 128, 160) == (128, 160)
    assert exported_resize(100, 300, 128, 160) == (53, 160)  # the longer side limits
    # float64 floors these to 147 x 127 and 160 x 138 (eager PyTorch), float32 to:
    assert exported_resize(185, 161, 128, 160) == (147, 128)
    assert exported_resize(237, 205, 160, 160) == (159, 138)
