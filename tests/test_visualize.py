"""Pictures of the F-Noise perturbation: computed from the model's own backbone, zero in eval mode."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from _training import tensorboard_images, tensorboard_scalars
from fnoise_maskrcnn import maskrcnn_mobilenet_v3_large_fpn, maskrcnn_resnet50_fpn
from fnoise_maskrcnn.io.checkpoint import make_checkpoint, save_checkpoint
from fnoise_maskrcnn.visualization import fnoise_perturbation, log_fnoise_pictures
from fnoise_maskrcnn.visualize import main

SIGMA = 0.2


def _mobilenet(use_f_noise: bool = True, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return maskrcnn_mobilenet_v3_large_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        use_f_noise=use_f_noise,
        f_noise_std=SIGMA,
        min_size=160,
        max_size=192,
        **kwargs,
    )


def _image(synthetic_coco) -> torch.Tensor:
    path = sorted(synthetic_coco.train_images.glob("*.jpg"))[0]
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def test_resnet50_perturbation_is_zero_in_eval_and_proportional_in_train(synthetic_coco):
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        use_f_noise=True,
        f_noise_std=SIGMA,
        min_size=128,
        max_size=160,
    ).train()
    image = _image(synthetic_coco)
    picture = fnoise_perturbation(model, image, seed=3)

    assert [level.name for level in picture.train] == ["0", "1", "2", "3"]
    assert [level.source for level in picture.train] == ["layer1", "layer2", "layer3", "layer4"]
    assert [level.shape[1] for level in picture.train] == [256, 512, 1024, 2048]
    for train, evaluation in zip(picture.train, picture.eval):
        # eval mode: the perturbation is exactly zero and the features are untouched
        assert torch.count_nonzero(evaluation.noise) == 0
        assert evaluation.noise_to_signal == 0.0
        assert torch.equal(evaluation.perturbed, evaluation.clean)
        # training mode: elementwise noise sigma * |x| * eps, so ||noise|| / ||x|| is about sigma
        assert torch.all(train.noise[train.clean > 0] > 0)
        assert train.noise_to_signal == pytest.approx(SIGMA, rel=0.1)
        assert torch.equal(train.clean, evaluation.clean)
        # the map of the relative noise is close to sigma * E|eps| = sigma * sqrt(2 / pi)
        assert train.relative.mean().item() == pytest.approx(SIGMA * math.sqrt(2 / math.pi), rel=0.15)
    # the model is left in training mode with its F-Noise settings
    assert model.training and model.backbone.f_noise.training and model.backbone.body.training
    assert model.backbone.f_noise.std == SIGMA and model.backbone.f_noise.generator is None


def test_picture_is_reproducible_and_leaves_model_and_rng_alone(synthetic_coco):
    model = _mobilenet().eval()
    model.backbone.f_noise.record = True
    image = _image(synthetic_coco)
    rng_state = torch.get_rng_state()
    buffers = {name: b.clone() for name, b in model.named_buffers()}

    first = fnoise_perturbation(model, image, seed=7)
    again = fnoise_perturbation(model, image, seed=7)
    other = fnoise_perturbation(model, image, seed=8)

    assert torch.equal(torch.get_rng_state(), rng_state)
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    assert not model.training and not model.backbone.f_noise.training
    assert model.backbone.f_noise.record is True and model.backbone.f_noise.recorded_perturbations == {}
    for a, b, c in zip(first.train, again.train, other.train):
        assert torch.equal(a.noise, b.noise)
        assert not torch.equal(a.noise, c.noise)
    # the shown image is the resized input in [0, 1], min side 160
    assert first.image.shape[0] == 3 and min(first.image.shape[1:]) == 160
    assert 0.0 <= first.image.min() and first.image.max() <= 1.0


def test_overrides_show_a_disabled_model_what_sigma_would_do(synthetic_coco):
    model = _mobilenet(use_f_noise=False).train()
    image = _image(synthetic_coco)
    disabled = fnoise_perturbation(model, image)
    assert all(level.noise_to_signal == 0.0 for level in disabled.train)

    shown = fnoise_perturbation(model, image, std=0.5, mode="channel", levels=["1"])
    assert [level.name for level in shown.train] == ["1"]
    assert shown.std == 0.5 and shown.mode == "channel"
    assert shown.train[0].noise_to_signal > 0.1 and shown.eval[0].noise_to_signal == 0.0
    assert model.backbone.f_noise.std == 0.0 and model.backbone.f_noise.levels is None


def test_log_fnoise_pictures_writes_pngs_and_tensorboard(synthetic_coco, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    model = nn.DataParallel(_mobilenet().train())  # wrapped like the training loop may wrap it
    images = [_image(synthetic_coco), torch.rand(3, 150, 170)]
    with SummaryWriter(tmp_path / "tb") as writer:
        paths = log_fnoise_pictures(model, images, tmp_path, writer, step=12)

    assert paths == [tmp_path / "fnoise" / f"step0000012_image{i}.png" for i in range(2)]
    for path in paths:
        with Image.open(path) as png:
            png.verify()
        with Image.open(path) as png:
            assert png.format == "PNG" and png.width >= 600 and png.height >= 400
    assert tensorboard_images(tmp_path / "tb") == {"fnoise/image0": [12], "fnoise/image1": [12]}
    ratios = tensorboard_scalars(tmp_path / "tb")
    assert set(ratios) == {"f_noise_nsr/level_0", "f_noise_nsr/level_1"}  # the name training logs under
    assert all(
        points[0][0] == 12 and points[0][1] == pytest.approx(SIGMA, rel=0.1) for points in ratios.values()
    )
    assert not list((tmp_path / "fnoise").glob(".*"))  # no temporary files left behind
    assert model.training


def test_cli_draws_picture_from_checkpoint(synthetic_coco, tmp_path, capsys):
    model = _mobilenet(use_f_noise=False)
    checkpoint = tmp_path / "model.pth"
    categories = [{"id": i, "name": f"c{i}"} for i in range(1, 5)]
    save_checkpoint(make_checkpoint(model.state_dict(), model.build_config, categories), checkpoint)
    image = sorted(synthetic_coco.train_images.glob("*.jpg"))[0]
    out = tmp_path / "pictures" / "fnoise.png"

    argv = ["--checkpoint", str(checkpoint), "--image", str(image), "--out", str(out), "--seed", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "level 1" in printed and f"wrote {out}" in printed
    train_ratios = [float(line.rsplit("=", 1)[1]) for line in printed.splitlines() if ": train" in line]
    eval_ratios = [float(line.rsplit("=", 1)[1]) for line in printed.splitlines() if ": eval" in line]
    assert len(train_ratios) == 2 and all(r == pytest.approx(SIGMA, rel=0.1) for r in train_ratios)
    assert eval_ratios == [0.0, 0.0]
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width >= 600

    # --min-size resizes for the picture: shorter side 256 -> stride-32 maps with a shorter side of 8
    assert main([*argv, "--min-size", "256", "--max-size", "512"]) == 0
    shapes = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if ": train" in line]
    assert shapes and all(min(json.loads(shape.split(" ", 2)[2])[2:]) == 8 for shape in shapes)


def test_cli_errors_are_one_line(synthetic_coco, tmp_path, capsys):
    image = sorted(synthetic_coco.train_images.glob("*.jpg"))[0]
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(bad), "--image", str(image), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --checkpoint") and str(bad) in err and len(err.splitlines()) == 1

    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    assert main(["--checkpoint", str(bad), "--image", str(not_image), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --image") and len(err.splitlines()) == 1

    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(bad), "--image", str(tmp_path / "no.jpg"), "--out", "x.png"])
    assert exit_info.value.code == 2
    assert "--image" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
