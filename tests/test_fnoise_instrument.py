"""F-Noise as a research instrument: noise distributions, per-level sigma, sigma schedules, presets."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import pytest
import torch

from fnoise_maskrcnn import train
from fnoise_maskrcnn.arguments import parse
from fnoise_maskrcnn.fnoise import F_NOISE_PRESETS, FNoise, FNoiseConfig, FNoiseSchedule


def _features(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return OrderedDict((str(i), torch.randn(2, 8, 32, 32) + 3.0) for i in range(4))


@pytest.mark.parametrize("mode", ["elementwise", "channel", "sample", "tensor"])
def test_uniform_noise_has_the_requested_relative_std(mode):
    module = FNoise(0.2, mode, distribution="uniform").train()
    x = torch.full((4, 16, 64, 64), 2.0)  # constant magnitude: every mode's m(x) is 2
    relative = (module(x) - x) / 2.0
    n = relative.numel()
    assert relative.std().item() == pytest.approx(0.2, abs=6 * 0.2 / math.sqrt(2 * n))
    assert relative.abs().max().item() <= 0.2 * math.sqrt(3) + 1e-6  # bounded, unlike the Gaussian


def test_deepmirror_preset_is_u_08_12():
    module = F_NOISE_PRESETS["deepmirror-uniform"].module().train()
    x = torch.ones(1, 4, 128, 128)
    factor = module(x)
    assert factor.min().item() >= 0.8 - 1e-6 and factor.max().item() <= 1.2 + 1e-6
    assert factor.min().item() < 0.81 and factor.max().item() > 1.19
    assert factor.mean().item() == pytest.approx(1.0, abs=0.005)


def test_per_level_sigma_perturbs_only_named_levels_with_their_own_sigma():
    module = FNoise({"0": 0.0, "3": 0.3}).train()
    features = _features()
    out = module(features)
    assert out["0"] is features["0"] and out["1"] is features["1"] and out["2"] is features["2"]
    relative = (out["3"] - features["3"]) / features["3"]
    assert relative.std().item() == pytest.approx(0.3, rel=0.05)
    assert module.std_for("3") == 0.3 and module.std_for("1") == 0.0
    with pytest.raises(ValueError, match="either a per-level std mapping or levels"):
        FNoise({"3": 0.1}, levels=["3"])
    with pytest.raises(ValueError, match="finite number >= 0"):
        FNoise({"3": -0.1})


def test_scale_multiplies_sigma_and_zero_scale_is_the_identity():
    module = FNoise(0.2).train()
    features = _features()
    module.scale = 0.5
    relative = (module(features)["2"] - features["2"]) / features["2"]
    assert relative.std().item() == pytest.approx(0.1, rel=0.05)
    module.scale = 0.0
    assert module(features) is features


def test_schedules():
    linear = FNoiseSchedule("linear", end_factor=0.0, total_iters=11)
    assert [linear(i) for i in (0, 5, 10, 50)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    cosine = FNoiseSchedule("cosine", end_factor=0.5, total_iters=11)
    assert [cosine(i) for i in (0, 5, 10)] == pytest.approx([1.0, 0.75, 0.5])
    step = FNoiseSchedule("step", end_factor=0.0, total_iters=100, iters_per_epoch=10, step_epochs=(3, 6))
    assert [step(i) for i in (29, 30, 59, 60)] == [1.0, 0.5, 0.5, 0.0]
    warm = FNoiseSchedule(warmup_iters=4)
    assert [warm(i) for i in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    with pytest.raises(ValueError, match="needs the epochs"):
        FNoiseSchedule("step")


def test_train_flags_parse_per_level_sigma_and_check_schedules(capsys):
    assert parse(["--f-noise", "--f-noise-std", "0=0.05", "3=0.2"]).config.model.f_noise.std == {
        "0": 0.05,
        "3": 0.2,
    }
    assert parse(["--f-noise-std", "0.3"]).config.model.f_noise.std == 0.3
    for argv, message in [
        (["--f-noise-std", "0=x"], "--f-noise-std: could not convert"),
        (["--f-noise-std", "-1"], "--f-noise-std must be a finite number >= 0"),
        (["--f-noise-std", "3=-0.1"], "--f-noise-std level 3 must be a finite number >= 0"),
        (["--f-noise-schedule", "linear"], "needs --f-noise-std-end"),
        (["--f-noise-schedule", "step", "--f-noise-std-end", "0"], "needs --f-noise-step-epochs"),
        (["--f-noise-std", "3=0.1", "--f-noise-levels", "3"], "per-level --f-noise-std already names"),
    ]:
        with pytest.raises(SystemExit):
            parse(argv)
        assert message in capsys.readouterr().err, argv


def test_training_logs_the_scheduled_per_level_sigma(synthetic_coco, tmp_path):
    out = tmp_path / "run"
    argv = [
        "--train-ann",
        str(synthetic_coco.train_ann),
        "--train-images",
        str(synthetic_coco.train_images),
        "--model",
        "mobilenet_v3",
        "--norm",
        "bn",
        "--min-size",
        "96",
        "--max-size",
        "96",
        "--max-images",
        "4",
        "-b",
        "1",
        "--epochs",
        "1",
        "--warmup-iters",
        "0",
        "--workers",
        "0",
        "--print-freq",
        "1",
        "--no-amp",
        "--model-kwarg",
        "box_batch_size_per_image=16",
        "--model-kwarg",
        "rpn_post_nms_top_n_train=50",
        "--f-noise",
        "--f-noise-std",
        "0=0.1",
        "1=0.2",
        "--f-noise-schedule",
        "linear",
        "--f-noise-std-end",
        "0",
        "--output-dir",
        str(out),
    ]
    assert train.main(argv) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    sigmas = [r["f_noise_std"] for r in records if r["type"] == "iter"]
    assert sigmas == [pytest.approx({"0": 0.1 * f, "1": 0.2 * f}) for f in (1.0, 2 / 3, 1 / 3, 0.0)]
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["f_noise"]["std"] == {"0": 0.1, "1": 0.2}


def test_seed001_preset_adds_hw_noise_around_the_mean_to_c5_only():
    module = F_NOISE_PRESETS["seed001-additive"].module().train()
    features = _features()
    out = module(features)
    assert all(out[level] is features[level] for level in ("0", "1", "2"))
    added = out["3"] - features["3"]
    # one [H, W] plane, the same for every sample and channel
    assert torch.allclose(added, added[:1, :1].expand_as(added), atol=1e-5)
    plane = added[0, 0]
    assert plane.mean().item() == pytest.approx(features["3"].mean().item(), abs=4 * 0.1 / 32)
    assert plane.std().item() == pytest.approx(0.1, rel=0.15)
    f_noise = parse(["--f-noise-preset", "seed001-additive"]).config.model.f_noise
    assert (f_noise.enabled, f_noise.mode, f_noise.levels, f_noise.std) == (True, "additive-hw", ("3",), 0.1)


@pytest.mark.parametrize("name", sorted(F_NOISE_PRESETS))
def test_every_preset_is_the_identity_in_eval_adds_no_state_and_scripts(name):
    module = F_NOISE_PRESETS[name].module(["0", "1", "2", "3"])
    features = _features()
    assert module.eval()(features) is features
    assert not list(module.parameters()) and not list(module.buffers()) and module.state_dict() == {}
    scripted = torch.jit.script(module)
    assert scripted.eval()(features) is not None
    assert torch.equal(scripted(features)["3"], features["3"])
    module.train()
    torch.manual_seed(0)
    perturbed = module(features)
    assert not torch.equal(perturbed["3"], features["3"])  # every preset perturbs C5 in training


def test_f_noise_config_round_trips_validates_and_describes():
    config = FNoiseConfig(enabled=True, std={"0": 0.05, "3": 0.2}, schedule="linear", std_end=0.0)
    assert FNoiseConfig.from_dict(config.to_dict()) == config
    assert config.base_std == 0.2 and config.active
    assert config.describe() == "elementwise gaussian sigma=0:0.05,3:0.2 schedule=linear->0"
    assert config.sigma_schedule(iters_per_epoch=5, epochs=2)(9) == 0.0
    assert not FNoiseConfig(enabled=True, std=0.0).active and FNoiseConfig().describe() == "off"
    for kwargs, words in [
        ({"mode": "pixel"}, "f_noise mode must be one of"),
        ({"std": -1.0}, "finite number >= 0"),
        ({"schedule": "cosine"}, "needs std_end"),
        ({"schedule": "step", "std_end": 0.0}, "needs step_epochs"),
        ({"std": {"3": 0.1}, "levels": ("3",)}, "either a per-level std mapping or levels"),
    ]:
        with pytest.raises(ValueError, match=words):
            FNoiseConfig(enabled=True, **kwargs)
    with pytest.raises(ValueError, match="unknown f_noise setting"):
        FNoiseConfig.from_dict({"sigma": 0.1})


def test_recording_and_overridden_restore_the_module():
    module = FNoise(0.1).train()
    features = _features()
    with module.recording():
        module(features)
        ratios = module.noise_to_signal()
        assert set(ratios) == {"0", "1", "2", "3"} and all(0.08 < r < 0.12 for r in ratios.values())
    assert not module.record and module.recorded_inputs == {}
    with module.overridden(std=0.5, mode="channel", training=False):
        assert (module.std, module.mode) == (0.5, "channel")
    assert (module.std, module.mode, module.training) == (0.1, "elementwise", True)
