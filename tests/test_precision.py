"""float32_box_geometry: under bfloat16 autocast the box arithmetic of the real model stays float32."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import roi_heads

from fnoise_maskrcnn import maskrcnn_resnet50_fpn
from fnoise_maskrcnn.precision import detection_autocast, float32_box_geometry

SIZE = 160
INSTANCES = 300  # more than bfloat16 counts exactly (256)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    # Fewer sampled RoIs, test proposals and kept detections than torchvision's 512, 1000 and 100 keep
    # the RoI heads, most of the cost under bfloat16 autocast (emulated on CPUs without bfloat16
    # instructions), small; the sampled positives still reach instance indices above 256.
    return maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=2,
        min_size=SIZE,
        max_size=SIZE,
        use_f_noise=True,
        box_batch_size_per_image=128,
        rpn_post_nms_top_n_test=200,
        box_detections_per_img=25,
    )


def _crowded_target() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(INSTANCES, 2, generator=generator) * (SIZE - 12)
    boxes = torch.cat([corners, corners + 6 + torch.rand(INSTANCES, 2, generator=generator) * 5], 1)
    masks = torch.zeros(INSTANCES, SIZE, SIZE, dtype=torch.uint8)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.round().int().tolist()):
        mask[y0:y1, x0:x1] = 1
    return {"boxes": boxes, "labels": torch.ones(INSTANCES, dtype=torch.int64), "masks": masks}


def _mask_targets_seen(model, monkeypatch, geometry: bool) -> dict[str, object]:
    """Trains on one crowded image under bfloat16 autocast and records what torchvision's
    project_masks_on_boxes receives: the proposals' dtype and the instance indices it will use."""
    seen: dict[str, object] = {}
    original = roi_heads.project_masks_on_boxes

    def spy(gt_masks, proposals, matched_idxs, size):
        seen["dtype"] = proposals.dtype
        seen["indices"] = matched_idxs[:, None].to(proposals)[:, 0].long()
        seen["matched"] = matched_idxs.clone()
        return original(gt_masks, proposals, matched_idxs, size)

    monkeypatch.setattr(roi_heads, "project_masks_on_boxes", spy)
    model.train()
    torch.manual_seed(1)
    image = torch.rand(3, SIZE, SIZE)
    with float32_box_geometry(model, geometry), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([image], [_crowded_target()])
    assert all(torch.isfinite(v) for v in losses.values())
    return seen


def test_mask_targets_keep_their_instance_under_bfloat16(model, monkeypatch):
    seen = _mask_targets_seen(model, monkeypatch, geometry=True)
    assert seen["dtype"] == torch.float32
    assert int(seen["matched"].max()) > 256  # the test reaches the indices bfloat16 rounds
    assert torch.equal(seen["indices"], seen["matched"])


def test_without_it_torchvision_rounds_the_instance_indices(model, monkeypatch):
    # what the guard is for: plain autocast hands bfloat16 proposals to the mask targets, and instance
    # 257 becomes 256 (if torchvision changes this, the guard may no longer be needed)
    seen = _mask_targets_seen(model, monkeypatch, geometry=False)
    assert seen["dtype"] == torch.bfloat16
    assert not torch.equal(seen["indices"], seen["matched"])


def test_boxes_are_float32_under_autocast_and_unchanged_in_float32(model):
    model.eval()
    torch.manual_seed(2)
    images = [torch.rand(3, SIZE, SIZE)]
    model.roi_heads.score_thresh = 0.0  # an untrained model: keep every detection
    with torch.inference_mode():
        plain = model(images)[0]
        with float32_box_geometry(model):
            guarded = model(images)[0]
        with detection_autocast(model, "cpu", torch.bfloat16):
            mixed = model(images)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = model(images)[0]
    assert len(plain["boxes"]) > 0
    for key in ("boxes", "labels", "scores", "masks"):
        assert torch.equal(plain[key], guarded[key]), key  # in float32 the hooks change nothing
    assert mixed["boxes"].dtype == mixed["scores"].dtype == torch.float32
    assert rounded["boxes"].dtype == torch.bfloat16
    # float32 boxes are not confined to bfloat16's grid (1 px between 128 and 160)
    big = mixed["boxes"][mixed["boxes"] > 128]
    assert big.numel() > 0 and not torch.equal(big, big.round())


def test_hooks_are_removed_after_the_block(model):
    modules = (model.rpn.anchor_generator, model.rpn.head, model.roi_heads.box_predictor)
    with float32_box_geometry(model):
        assert all(m._forward_hooks or m._forward_pre_hooks for m in modules)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in modules)
