"""Training from scratch: GroupNorm models, recipes, and a short training that must lower the loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from fnoise_maskrcnn import build_model, maskrcnn_mobilenet_v3_large_fpn, maskrcnn_resnet50_fpn, train
from fnoise_maskrcnn.arguments import parse
from fnoise_maskrcnn.deploy.export import export
from fnoise_maskrcnn.io.checkpoint import save_checkpoint
from fnoise_maskrcnn.io.model_io import model_from_checkpoint
from fnoise_maskrcnn.recipes import LIGHT_HEADS, RECIPES

SMALL = {
    "min_size": 96,
    "max_size": 96,
    "rpn_pre_nms_top_n_train": 100,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 50,
    "rpn_post_nms_top_n_test": 25,
    "box_batch_size_per_image": 32,
    "box_detections_per_img": 10,
    "box_score_thresh": 0.0,
}
BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)


def gn_model(seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return maskrcnn_resnet50_fpn(weights_backbone=None, num_classes=3, norm="gn", **SMALL, **kwargs)


def _targets(size: int = 96) -> tuple[list[torch.Tensor], list[dict]]:
    torch.manual_seed(1)
    images = [torch.rand(3, size, size) for _ in range(2)]
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 10:50, 20:70] = 1
    masks[1, 40:90, 5:45] = 1
    boxes = torch.tensor([[20.0, 10.0, 70.0, 50.0], [5.0, 40.0, 45.0, 90.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}
    return images, [target, target]


def test_gn_model_has_no_batchnorm_and_gn_everywhere():
    model = gn_model()
    assert not any(isinstance(m, BATCH_NORMS) for m in model.modules())
    for part in (
        model.backbone.body,
        model.backbone.fpn,
        model.roi_heads.box_head,
        model.roi_heads.mask_head,
    ):
        assert any(isinstance(m, nn.GroupNorm) and m.num_groups == 32 for m in part.modules())
    assert model.build_config["norm"] == "gn"
    # MobileNetV3's channel counts (16, 24, 40, ...) are not all multiples of 32: the groups divide them.
    mobile = maskrcnn_mobilenet_v3_large_fpn(weights_backbone=None, num_classes=3, norm="gn", **SMALL)
    norms = [m for m in mobile.backbone.body.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_channels % m.num_groups == 0 for m in norms)
    assert not any(isinstance(m, BATCH_NORMS) for m in mobile.modules())


@pytest.mark.parametrize(("norm", "layer"), [("bn", nn.BatchNorm2d), ("frozen_bn", FrozenBatchNorm2d)])
def test_batchnorm_choices_keep_torchvision_modules(norm, layer):
    model = maskrcnn_resnet50_fpn(weights_backbone=None, num_classes=3, norm=norm, **SMALL)
    assert isinstance(model.backbone.body.bn1, layer)
    reference = maskrcnn_resnet50_fpn(weights_backbone=None, num_classes=3, **SMALL)
    # FrozenBatchNorm2d has no num_batches_tracked buffer; every other key is torchvision's
    assert list(model.state_dict()) == [
        k for k in reference.state_dict() if norm == "bn" or "num_batches" not in k
    ]
    with pytest.raises(ValueError, match="norm must be one of"):
        maskrcnn_resnet50_fpn(weights_backbone=None, norm="layernorm")


def test_gn_model_trains_a_step_and_round_trips_through_checkpoint_and_export(tmp_path):
    model = gn_model(use_f_noise=True, f_noise_std=0.1)
    images, targets = _targets()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = model.backbone.body.conv1.weight.detach().clone()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    # GroupNorm heads start calibrated: the mask loss is that of a coin toss, not BatchNorm's ~5 from scratch.
    assert losses["loss_mask"].item() == pytest.approx(math.log(2), abs=0.15)
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(before, model.backbone.body.conv1.weight)

    model.eval()
    with torch.no_grad():
        expected = model(images[:1])[0]
    path = tmp_path / "gn.pth"
    checkpoint = {
        "format": "fnoise_maskrcnn",
        "version": 1,
        "model": model.state_dict(),
        "model_config": model.build_config,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    save_checkpoint(checkpoint, path)
    rebuilt, _ = model_from_checkpoint(path)
    assert not any(isinstance(m, BATCH_NORMS) for m in rebuilt.modules())
    with torch.no_grad():
        again = rebuilt(images[:1])[0]
    assert torch.equal(expected["boxes"], again["boxes"]) and torch.equal(expected["masks"], again["masks"])

    scripted_path = tmp_path / "gn.pt"
    export(path, "torchscript", scripted_path)
    scripted = torch.jit.load(str(scripted_path))
    with torch.no_grad():
        _, scripted_out = scripted(images[:1])
    torch.testing.assert_close(scripted_out[0]["boxes"], expected["boxes"])


def test_build_model_reads_the_older_frozen_batchnorm_key():
    config = {"arch": "resnet50", "num_classes": 3, "frozen_batchnorm": True, "model_kwargs": SMALL}
    model = build_model(config)
    assert (
        isinstance(model.backbone.body.bn1, FrozenBatchNorm2d) and model.build_config["norm"] == "frozen_bn"
    )


def _flags(argv: list[str]) -> dict:
    """The resolved configuration of a command line, as ``{flag dest: value}``."""
    return parse(argv).config.flags()


def test_recipes_resolve_to_their_values_and_explicit_flags_win():
    flags = _flags([])
    assert flags["recipe"] == "synthetic"
    for key, value in RECIPES["synthetic"].items():
        assert flags[key] == (list(map(list, value)) if key == "model_kwarg" else value), key
    assert dict(flags["model_kwarg"]) == dict(LIGHT_HEADS)

    flags = _flags(["--lr", "0.005", "--norm", "bn", "--model-kwarg", "box_batch_size_per_image=32"])
    assert (flags["recipe"], flags["lr"], flags["norm"], flags["min_size"]) == ("synthetic", 0.005, "bn", 160)
    assert dict(flags["model_kwarg"])["box_batch_size_per_image"] == 32  # the later value wins

    # torchvision's defaults, resolved: COCO sizes, 0.02 per 16 images, steps at 16/26 and 22/26 of the epochs
    flags = _flags(["--data-path", "somewhere"])
    assert (flags["recipe"], flags["norm"], flags["min_size"], flags["max_size"], flags["epochs"]) == (
        "torchvision",
        None,
        800,
        1333,
        26,
    )
    assert (flags["lr"], flags["lr_steps"], flags["warmup_iters"], flags["amp"]) == (
        0.0025,
        [16, 22],
        1000,
        False,
    )
    assert _flags(["--data-path", "somewhere", "--epochs", "13", "-b", "8"])["lr_steps"] == [8, 11]
    assert _flags(["--data-path", "somewhere", "-b", "8"])["lr"] == 0.01

    flags = _flags(["--data-path", "somewhere", "--recipe", "cpu-scratch", "--epochs", "3"])
    assert (flags["recipe"], flags["norm"], flags["min_size"], flags["epochs"], flags["scale_jitter"]) == (
        "cpu-scratch",
        "gn",
        384,
        3,
        True,
    )
    flags = _flags(["--recipe", "gpu-scratch"])
    assert (flags["norm"], flags["lr_steps"], flags["epochs"], flags["amp"]) == ("gn", [28, 34], 37, True)


def test_recipe_and_preset_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        parse(["--recipe", "fast"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--recipe: invalid choice: 'fast'" in err and err.count("error:") == 1  # reported once


def test_f_noise_preset_sets_the_original_definition_and_flags_override():
    f_noise = parse(["--f-noise-preset", "deepmirror-uniform"]).config.model.f_noise
    assert f_noise.enabled and f_noise.distribution == "uniform" and f_noise.mode == "elementwise"
    assert f_noise.std == pytest.approx(0.2 / math.sqrt(3))
    f_noise = parse(["--f-noise-preset", "deepmirror-uniform", "--f-noise-std", "0.05"]).config.model.f_noise
    assert f_noise.std == 0.05 and f_noise.distribution == "uniform"


def _short_gn_training(data, out: Path) -> list[float]:
    argv = [
        "--train-ann",
        str(data.train_ann),
        "--train-images",
        str(data.train_images),
        "--recipe",
        "synthetic",
        "--min-size",
        "96",
        "--max-size",
        "96",
        "--max-images",
        "2",
        "-b",
        "2",
        "--epochs",
        "8",
        "--lr",
        "0.02",
        "--warmup-iters",
        "0",
        "--lr-scheduler",
        "multistep",
        "--no-amp",
        "--workers",
        "0",
        "--print-freq",
        "1",
        "--aspect-ratio-group-factor",
        "-1",
        "--output-dir",
        str(out),
    ]
    assert train.main(argv) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["type"] == "iter"]


def test_short_gn_training_lowers_the_loss_and_fails_without_optimizer_steps(
    synthetic_coco, tmp_path, monkeypatch
):
    """Eight steps on two images must cut the loss by a quarter; with the optimizer step skipped that
    fails."""
    losses = _short_gn_training(synthetic_coco, tmp_path / "learns")
    assert len(losses) == 8
    assert min(losses[-2:]) < 0.75 * losses[0], f"loss went from {losses[0]:.3f} to {losses[-2:]}"

    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, closure=None: None)
    frozen = _short_gn_training(synthetic_coco, tmp_path / "frozen")
    assert not min(frozen[-2:]) < 0.75 * frozen[0]
