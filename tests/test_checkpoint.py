"""Checkpoints: atomic saving, safe loading with one-line errors, weights files, rebuilding a model."""

from __future__ import annotations

import pytest
import torch

from fnoise_maskrcnn import maskrcnn_mobilenet_v3_large_fpn
from fnoise_maskrcnn.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_file,
    model_from_checkpoint,
    save_checkpoint,
)

CATEGORIES = [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return maskrcnn_mobilenet_v3_large_fpn(
        weights_backbone=None,
        num_classes=3,
        use_f_noise=True,
        f_noise_std=0.2,
        f_noise_levels=["1"],
        min_size=96,
        max_size=128,
        box_score_thresh=0.0,
        box_detections_per_img=20,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50,
    )


def checkpoint_of(model, **extra):
    return {
        "format": "fnoise_maskrcnn",
        "version": 1,
        "model": model.state_dict(),
        "model_config": model.build_config,
        "categories": CATEGORIES,
        **extra,
    }


def one_line_error(path, message_part):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and message_part in message
    return message


def test_save_and_load_round_trip(tmp_path, model):
    path = tmp_path / "sub" / "ckpt.pth"
    save_checkpoint(checkpoint_of(model, epoch=2, args={"lr": 0.01}), path)
    loaded = load_checkpoint(path)
    assert torch.load(path, weights_only=True).keys() == loaded.keys()
    assert loaded["categories"] == CATEGORIES and loaded["epoch"] == 2 and loaded["args"] == {"lr": 0.01}
    assert loaded["model_config"] == model.build_config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded["model"][key], value), key
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]


def test_failed_save_leaves_the_old_file_and_no_temporary_file(tmp_path, model, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(checkpoint_of(model, epoch=1), path)
    before = path.read_bytes()

    def crash_halfway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(checkpoint_of(model, epoch=2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_missing_file(tmp_path):
    one_line_error(tmp_path / "absent.pth", "no such file")


def test_corrupt_file(tmp_path, model):
    path = tmp_path / "corrupt.pth"
    save_checkpoint(checkpoint_of(model), path)
    path.write_bytes(path.read_bytes()[:1000])
    one_line_error(path, "cannot be loaded")
    path.write_bytes(b"not a checkpoint at all\n" * 3)
    one_line_error(path, "cannot be loaded")


class NotATensor:
    pass


def test_file_needing_unsafe_unpickling_is_refused(tmp_path):
    path = tmp_path / "pickle.pth"
    torch.save({"format": "fnoise_maskrcnn", "payload": NotATensor()}, path)
    one_line_error(path, "weights_only=True")


@pytest.mark.parametrize(
    "change, message_part",
    [
        (lambda c: c.pop("format"), "not an fnoise_maskrcnn checkpoint"),
        (lambda c: c.update(format="detectron2"), "not an fnoise_maskrcnn checkpoint"),
        (lambda c: c.update(version=2), "version 2 is not supported"),
        (lambda c: c.pop("model_config"), "no 'model_config'"),
        (lambda c: c.pop("categories"), "no 'categories'"),
        (lambda c: c.pop("model"), "no 'model'"),
    ],
)
def test_files_that_are_not_our_checkpoints(tmp_path, model, change, message_part):
    checkpoint = checkpoint_of(model)
    change(checkpoint)
    path = tmp_path / "other.pth"
    torch.save(checkpoint, path)
    one_line_error(path, message_part)


def test_a_plain_state_dict_is_not_a_checkpoint(tmp_path, model):
    path = tmp_path / "state_dict.pth"
    torch.save(model.state_dict(), path)
    one_line_error(path, "not an fnoise_maskrcnn checkpoint")


def test_load_state_dict_file_reads_every_weights_layout(tmp_path, model):
    state = model.state_dict()
    layouts = {
        "ours.pth": (checkpoint_of(model), model.build_config),
        "plain.pth": (state, {}),
        "references.pth": ({"model": state, "epoch": 3}, {}),
    }
    for name, (content, expected_config) in layouts.items():
        torch.save(content, tmp_path / name)
        got, config = load_state_dict_file(tmp_path / name)
        assert config == expected_config and list(got) == list(state), name
        assert all(torch.equal(got[k], state[k]) for k in state), name
    for bad in ({"a": 1}, {}, [1, 2]):
        torch.save(bad, tmp_path / "bad.pth")
        with pytest.raises(CheckpointError, match="bad.pth: holds no state_dict"):
            load_state_dict_file(tmp_path / "bad.pth")


def test_model_from_checkpoint_rebuilds_the_model(tmp_path, model):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(checkpoint_of(model), path)
    images = [torch.rand(3, 96, 112, generator=torch.Generator().manual_seed(0))]
    model.eval()
    with torch.no_grad():
        expected = model(images)
    for source in (path, str(path), load_checkpoint(path)):
        rebuilt, checkpoint = model_from_checkpoint(source)
        assert not rebuilt.training and not rebuilt.backbone.f_noise.training
        assert checkpoint["categories"] == CATEGORIES
        assert rebuilt.build_config == model.build_config
        f = rebuilt.backbone.f_noise
        assert (f.std, f.mode, f.levels) == (0.2, "elementwise", ["1"])
        with torch.no_grad():
            got = rebuilt(images)
        assert len(got[0]["boxes"]) > 0
        for key in ("boxes", "labels", "scores", "masks"):
            assert torch.equal(got[0][key], expected[0][key]), key


def test_model_from_checkpoint_rejects_non_checkpoints(tmp_path, model):
    path = tmp_path / "state_dict.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="state_dict.pth: not an fnoise_maskrcnn checkpoint"):
        model_from_checkpoint(path)
