"""The factories against torchvision's Mask R-CNN: weights, outputs, losses, F-Noise placement, scripting."""

from __future__ import annotations

import copy
from urllib.error import URLError

import pytest
import torch
import torchvision
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.misc import FrozenBatchNorm2d

from fnoise_maskrcnn import (
    FNoise,
    FNoiseBackboneWithFPN,
    build_model,
    maskrcnn_mobilenet_v3_large_fpn,
    maskrcnn_resnet50_fpn,
)
from fnoise_maskrcnn.io.checkpoint import save_checkpoint

SIZE = 128
NUM_CLASSES = 3
#: Small images and few proposals keep each ResNet-50 pass to about a second on two CPU cores; the
#: same MaskRCNN keyword arguments go to torchvision's model, so comparisons stay exact.
SMALL = {
    "min_size": SIZE,
    "max_size": SIZE,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 64,
    "box_detections_per_img": 20,
    "box_score_thresh": 0.0,  # an untrained model scores every class low; keep its detections to compare
}


def torchvision_model(seed: int = 0, **kwargs) -> torchvision.models.detection.MaskRCNN:
    torch.manual_seed(seed)
    return torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, **SMALL, **kwargs
    )


def our_model(seed: int = 0, **kwargs) -> torchvision.models.detection.MaskRCNN:
    torch.manual_seed(seed)
    kwargs = {"weights": None, "weights_backbone": None, "num_classes": NUM_CLASSES, **SMALL, **kwargs}
    return maskrcnn_resnet50_fpn(**kwargs)


@pytest.fixture(scope="module")
def prototypes():
    """torchvision's model and ours with F-Noise (sigma 0.5), built once: the same seed, the same weights."""
    return torchvision_model(), our_model(use_f_noise=True, f_noise_std=0.5)


@pytest.fixture
def theirs(prototypes):
    return copy.deepcopy(prototypes[0])


@pytest.fixture
def ours(prototypes):
    return copy.deepcopy(prototypes[1])


def batch(seed: int = 0):
    """Two images of 128 x 112 px with two instances each, as torchvision's detection models take them."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, SIZE, SIZE - 16, generator=g) for _ in range(2)]
    targets = []
    for _ in images:
        masks = torch.zeros(2, SIZE, SIZE - 16, dtype=torch.uint8)
        masks[0, 10:60, 20:70] = 1
        masks[1, 50:120, 30:100] = 1
        boxes = torch.tensor([[20.0, 10.0, 70.0, 60.0], [30.0, 50.0, 100.0, 120.0]])
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


def assert_same_detections(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert set(g) == set(e) == {"boxes", "labels", "scores", "masks"}
        for key in e:
            assert torch.equal(g[key], e[key]), key


def assert_same_state(model_a, model_b):
    a, b = model_a.state_dict(), model_b.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_modules_initialisation_and_state_dict_keys_as_torchvision(prototypes):
    theirs, ours = prototypes
    assert isinstance(ours.backbone, FNoiseBackboneWithFPN) and isinstance(ours.backbone, BackboneWithFPN)
    assert isinstance(ours.backbone.f_noise, FNoise) and ours.backbone.f_noise.std == 0.5
    assert ours.backbone.out_channels == theirs.backbone.out_channels == 256
    assert_same_state(ours, theirs)  # F-Noise draws no random numbers at construction
    names = [n for n, _ in ours.named_modules() if "f_noise" not in n]
    assert names == [n for n, _ in theirs.named_modules()]


def test_state_dicts_load_strictly_both_ways(ours, theirs):
    with torch.no_grad():
        for tensor in theirs.state_dict().values():
            tensor.add_(1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert_same_state(ours, theirs)
    with torch.no_grad():
        for tensor in ours.state_dict().values():
            tensor.mul_(2)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert_same_state(theirs, ours)


def test_eval_outputs_equal_torchvision_exactly(ours, theirs):
    theirs.eval()
    ours.eval()
    images, _ = batch()
    with torch.no_grad():
        expected = theirs(images)
        got = ours(images)
    assert all(len(e["boxes"]) > 0 for e in expected)
    assert_same_detections(got, expected)


def test_training_losses_equal_torchvision_without_f_noise_and_differ_with_it(theirs):
    images, targets = batch()
    torch.manual_seed(10)
    expected = theirs.train()(images, targets)
    for use_f_noise in (False, True):
        ours = our_model(use_f_noise=use_f_noise, f_noise_std=0.5).train()
        torch.manual_seed(10)
        got = ours(images, targets)
        assert list(got) == list(expected)
        same = [torch.equal(got[k], expected[k]) for k in expected]
        assert all(same) if not use_f_noise else not any(same)


def capture_body_and_fpn_inputs(model):
    captured = {}
    model.backbone.body.register_forward_hook(lambda m, i, o: captured.__setitem__("body", o))
    model.backbone.fpn.register_forward_hook(lambda m, i, o: captured.__setitem__("fpn", i[0]))
    return captured


def test_f_noise_levels_c5_only_perturbs_c5():
    model = our_model(use_f_noise=True, f_noise_std=0.3, f_noise_levels=("3",)).train()
    captured = capture_body_and_fpn_inputs(model)
    model.backbone(torch.rand(2, 3, SIZE, SIZE))
    body, fpn = captured["body"], captured["fpn"]
    assert list(body) == list(fpn) == ["0", "1", "2", "3"]
    for name in ("0", "1", "2"):
        assert fpn[name] is body[name]
    assert not torch.equal(fpn["3"], body["3"])
    assert model.build_config["f_noise"]["levels"] == ["3"]


def test_all_levels_perturbed_in_training_and_none_in_eval(ours):
    model = ours.train()
    captured = capture_body_and_fpn_inputs(model)
    x = torch.rand(2, 3, SIZE, SIZE)
    model.backbone(x)
    assert all(not torch.equal(captured["fpn"][k], v) for k, v in captured["body"].items())
    model.eval()
    model.backbone(x)
    assert captured["fpn"] is captured["body"]


def test_use_f_noise_false_means_zero_std():
    model = our_model(use_f_noise=False, f_noise_std=0.3, f_noise_mode="channel")
    assert model.backbone.f_noise.std == 0.0
    assert model.build_config["f_noise"] == {
        "enabled": False,
        "std": 0.3,
        "mode": "channel",
        "distribution": "gaussian",
        "levels": None,
        "schedule": "constant",
        "std_end": None,
        "step_epochs": [],
        "warmup_iters": 0,
    }


def test_bad_f_noise_arguments_raise_value_error():
    with pytest.raises(ValueError, match="mode.*elementwise"):
        our_model(use_f_noise=True, f_noise_mode="bogus")
    with pytest.raises(ValueError, match="level.*C5.*allowed: 0, 1, 2, 3"):
        our_model(use_f_noise=True, f_noise_levels=("C5",))
    with pytest.raises(ValueError, match="std"):
        our_model(use_f_noise=True, f_noise_std=-1.0)


def test_gradients_reach_the_backbone_body_through_f_noise(ours):
    model = ours.train()
    images, targets = batch()
    sum(model(images, targets).values()).backward()
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer4.2.conv3.weight"):
        grad = model.backbone.body.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_weights_from_a_torchvision_state_dict_file(tmp_path, theirs):
    path = tmp_path / "torchvision_maskrcnn.pth"
    torch.save(theirs.state_dict(), path)
    ours = maskrcnn_resnet50_fpn(weights=str(path), weights_backbone=None, **SMALL)
    assert ours.build_config["num_classes"] == NUM_CLASSES
    # Pretrained detector weights freeze BatchNorm as in torchvision (no num_batches_tracked then).
    assert isinstance(ours.backbone.body.bn1, FrozenBatchNorm2d)
    state, expected = ours.state_dict(), theirs.state_dict()
    assert set(state) == {k for k in expected if not k.endswith("num_batches_tracked")}
    for key, value in state.items():
        assert torch.equal(value, expected[key]), key
    # Also through a pathlib.Path, and strictly into a torchvision model built the same way.
    again = maskrcnn_resnet50_fpn(weights=path, weights_backbone=None, **SMALL)
    assert_same_state(again, ours)


def test_weights_from_our_checkpoint_and_fine_tuning_to_other_classes(tmp_path, ours):
    source = ours
    path = tmp_path / "ours.pth"
    save_checkpoint(
        {
            "format": "fnoise_maskrcnn",
            "version": 1,
            "model": source.state_dict(),
            "model_config": source.build_config,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        },
        path,
    )
    same = maskrcnn_resnet50_fpn(weights=path, weights_backbone=None, **SMALL)
    expected = source.state_dict()
    for key, value in same.state_dict().items():
        assert torch.equal(value, expected[key]), key

    tuned = maskrcnn_resnet50_fpn(weights=path, weights_backbone=None, num_classes=6, **SMALL)
    box, mask = tuned.roi_heads.box_predictor, tuned.roi_heads.mask_predictor
    assert box.cls_score.out_features == 6 and box.bbox_pred.out_features == 24
    assert mask.mask_fcn_logits.out_channels == 6
    assert tuned.build_config["num_classes"] == 6
    for key, value in tuned.state_dict().items():
        if not key.startswith(("roi_heads.box_predictor", "roi_heads.mask_predictor")):
            assert torch.equal(value, expected[key]), key
    images, targets = batch()
    for target in targets:
        target["labels"] = torch.tensor([1, 5])  # a class the source model does not have
    losses = tuned.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_weights_backbone_from_a_local_resnet50_file(tmp_path):
    torch.manual_seed(9)
    resnet = torchvision.models.resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save(resnet.state_dict(), path)
    model = maskrcnn_resnet50_fpn(weights_backbone=path, num_classes=2, **SMALL)
    body = model.backbone.body
    for key in ("conv1.weight", "layer3.2.conv2.weight", "layer4.0.downsample.1.running_var"):
        assert torch.equal(body.state_dict()[key], resnet.state_dict()[key]), key
    # As torchvision with pretrained backbone weights: frozen BatchNorm, the last 3 stages trainable.
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert all(p.requires_grad for p in body.layer2.parameters())
    rebuilt = build_model(model.build_config)
    assert isinstance(rebuilt.backbone.body.bn1, FrozenBatchNorm2d)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert [p.requires_grad for p in rebuilt.parameters()] == [p.requires_grad for p in model.parameters()]


def test_missing_weights_file_names_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights_backbone.*nothing.pth"):
        maskrcnn_resnet50_fpn(weights_backbone=tmp_path / "nothing.pth", num_classes=2)
    with pytest.raises(FileNotFoundError, match="weights:.*nothing.pth"):
        maskrcnn_resnet50_fpn(weights=str(tmp_path / "nothing.pth"), weights_backbone=None)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"weights": "DEFAULT", "weights_backbone": None}, "weights"),
        ({"weights": MaskRCNN_ResNet50_FPN_Weights.COCO_V1, "weights_backbone": None}, "weights"),
        ({"weights_backbone": ResNet50_Weights.IMAGENET1K_V1, "num_classes": 2}, "weights_backbone"),
        ({"weights_backbone": "IMAGENET1K_V1", "num_classes": 2}, "weights_backbone"),
    ],
)
def test_torchvision_weights_offline_fail_with_a_clear_message(monkeypatch, kwargs, argument):
    def offline(*args, **kw):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=rf"^{argument}: could not download .*local file path") as info:
        maskrcnn_resnet50_fpn(**kwargs)
    assert "\n" not in str(info.value)


def test_unknown_weights_name_is_rejected():
    message = "^weights: unknown weights 'NOT_A_WEIGHT'; allowed: COCO_V1, DEFAULT"
    with pytest.raises(ValueError, match=message):
        maskrcnn_resnet50_fpn(weights="NOT_A_WEIGHT", weights_backbone=None)


def test_legacy_pretrained_arguments_as_in_torchvision():
    with pytest.warns(UserWarning, match="pretrained"):
        model = maskrcnn_resnet50_fpn(pretrained=False, pretrained_backbone=False, num_classes=2, **SMALL)
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in model.parameters())


def test_without_f_noise_gives_a_plain_backbone_sharing_modules(ours):
    model = ours
    plain = model.backbone.without_f_noise()
    assert type(plain) is BackboneWithFPN
    assert plain.body is model.backbone.body and plain.fpn is model.backbone.fpn
    assert plain.out_channels == model.backbone.out_channels
    assert list(plain.state_dict()) == list(model.backbone.state_dict())
    x = torch.rand(1, 3, SIZE, SIZE)
    model.eval()
    plain.eval()
    with torch.no_grad():
        expected, got = model.backbone(x), plain(x)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
        model.train()
        plain.train()
        noisy, clean = model.backbone(x), plain(x)
        assert not torch.equal(noisy["0"], clean["0"])


def test_build_config_rebuilds_the_same_architecture():
    model = our_model(use_f_noise=True, f_noise_std=0.2, f_noise_mode="sample", f_noise_levels=["2", "3"])
    rebuilt = build_model(model.build_config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.build_config == model.build_config
    f = rebuilt.backbone.f_noise
    assert (f.std, f.mode, f.levels) == (0.2, "sample", ["2", "3"])
    assert (rebuilt.transform.min_size, rebuilt.transform.max_size) == ((SIZE,), SIZE)
    assert rebuilt.roi_heads.detections_per_img == 20


def test_mobilenet_variant_trains_and_predicts_with_f_noise():
    torch.manual_seed(0)
    model = maskrcnn_mobilenet_v3_large_fpn(
        weights_backbone=None,
        num_classes=NUM_CLASSES,
        use_f_noise=True,
        f_noise_mode="channel",
        f_noise_levels=("1",),
        **SMALL,
    )
    assert model.backbone.f_noise.levels == ["1"] and model.build_config["arch"] == "mobilenet_v3"
    images, targets = batch()
    model.train()
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    grad = model.backbone.body["0"][0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["masks"].shape[1:] == (1, SIZE, SIZE - 16)
    rebuilt = build_model(model.build_config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with pytest.raises(ValueError, match="allowed: 0, 1"):
        maskrcnn_mobilenet_v3_large_fpn(weights_backbone=None, use_f_noise=True, f_noise_levels=("3",))


def test_whole_model_is_scriptable_and_scripted_matches_eager(ours):
    model = ours
    scripted = torch.jit.script(model)
    images, targets = batch()
    model.train()
    scripted.train()
    torch.manual_seed(11)
    expected = model(images, targets)
    torch.manual_seed(11)
    got, _ = scripted(images, targets)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)
    model.eval()
    scripted.eval()
    with torch.no_grad():
        expected = model(images)
        _, got = scripted(images)
    assert_same_detections(got, expected)
