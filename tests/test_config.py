"""The one training configuration: resolution, round trips, resume rules, and older config.json files."""

from __future__ import annotations

import dataclasses

import pytest

from fnoise_maskrcnn.arguments import parse
from fnoise_maskrcnn.config import TrainConfig, fixed_fields
from fnoise_maskrcnn.fnoise import FNoiseConfig
from fnoise_maskrcnn.io.checkpoint import make_checkpoint

ARGV = ["--epochs", "9", "--f-noise", "--f-noise-std", "0=0.05", "3=0.2", "--output-dir", "somewhere"]


def test_round_trips_and_is_frozen():
    config = parse(ARGV).config
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.read(config.to_dict()) == config
    assert TrainConfig.from_flags(config.flags()) == config
    assert config.model.f_noise == FNoiseConfig(enabled=True, std={"0": 0.05, "3": 0.2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.lr = 1.0  # type: ignore[misc]
    changed = config.replace("optim", epochs=12)
    assert changed.optim.epochs == 12 and config.optim.epochs == 9


def test_fixed_on_resume_is_marked_on_the_fields():
    fixed = set(fixed_fields())
    assert {
        "model",
        "seed",
        "batch_size",
        "lr_steps",
        "f_noise",
        "f_noise_std",
        "f_noise_warmup_iters",
    } <= fixed
    assert not {"epochs", "lr", "workers", "print_freq", "checkpoint_every", "output_dir"} & fixed


def test_an_older_flat_config_json_reads_as_the_same_configuration():
    """Earlier versions wrote the flags mixed with resolved values (generated data files, the category
    list); the same command must read as the same configuration, or a study would split its arms."""
    flags = parse(ARGV).config.flags()
    legacy = {
        **flags,
        "synthetic_data": True,
        "train_ann": "/cache/synthetic/train.json",
        "train_images": "/cache/synthetic/images",
        "val_ann": "/cache/synthetic/val.json",
        "val_images": "/cache/synthetic/images",
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "triangle"}],
        "model_config": {"arch": "resnet50"},
        "world_size": 1,
    }
    assert TrainConfig.read(legacy).flags() == flags
    with_data_path = {**legacy, "synthetic_data": False, "data_path": "/data/balloon"}
    assert TrainConfig.read(with_data_path).data == dataclasses.replace(
        parse([*ARGV, "--data-path", "/data/balloon", "--recipe", "synthetic"]).config.data
    )


def test_resume_refuses_a_changed_fixed_field_but_takes_a_longer_schedule(tmp_path, capsys):
    import torch

    config = parse(["--output-dir", str(tmp_path)]).config
    torch.save(make_checkpoint({}, {}, [], config=config.to_dict()), tmp_path / "last.pth")
    resumed = parse(["--resume", "--output-dir", str(tmp_path), "--epochs", "7", "--lr", "0.01"])
    assert (resumed.config.optim.epochs, resumed.config.optim.lr) == (7, 0.01)
    assert resumed.config.optim.lr_steps == config.optim.lr_steps  # resolved once, kept
    assert resumed.resumed["config"] == config.to_dict()
    with pytest.raises(SystemExit):
        parse(["--resume", "--output-dir", str(tmp_path), "--f-noise-std", "0.3"])
    assert "--f-noise-std 0.3 differs from the run's 0.1" in capsys.readouterr().err


def test_model_kwarg_overrides_the_recipe_in_place_and_the_same_command_resumes(tmp_path, capsys):
    import torch

    recipe = dict(parse([]).config.model.model_kwarg)  # the synthetic recipe's
    assert recipe["box_batch_size_per_image"] == 32
    argv = ["--output-dir", str(tmp_path), "--model-kwarg", "box_batch_size_per_image=64"]
    argv += ["--model-kwarg", "box_detections_per_img=20"]
    config = parse(argv).config
    keys = [key for key, _ in config.model.model_kwarg]
    assert keys == [*recipe, "box_detections_per_img"]  # each key once, the recipe's in their place
    assert dict(config.model.model_kwarg) == {
        **recipe,
        "box_batch_size_per_image": 64,
        "box_detections_per_img": 20,
    }
    torch.save(make_checkpoint({}, {}, [], config=config.to_dict()), tmp_path / "last.pth")
    resumed = parse([*argv, "--resume"]).config  # e.g. compare resuming a study's run
    assert resumed.model == config.model and resumed.run.resume
    with pytest.raises(SystemExit):
        parse([*argv, "--resume", "--model-kwarg", "box_batch_size_per_image=128"])
    assert "--model-kwarg" in capsys.readouterr().err.splitlines()[-1]
