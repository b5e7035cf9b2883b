"""Checkpoints: the one builder, atomic saving, safe loading with our own one-line refusals, weights files,
rebuilding a model (model_io)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from fnoise_maskrcnn import maskrcnn_mobilenet_v3_large_fpn
from fnoise_maskrcnn.io.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_file,
    make_checkpoint,
    save_checkpoint,
)
from fnoise_maskrcnn.io.model_io import model_from_checkpoint

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
    return make_checkpoint(model.state_dict(), model.build_config, CATEGORIES, **extra)


def one_line_error(path, message_part):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and message_part in message
    return message


def test_save_and_load_round_trip(tmp_path, model):
    path = tmp_path / "sub" / "ckpt.pth"
    original = checkpoint_of(model, epoch=2, args={"lr": 0.01})
    save_checkpoint(original, path)
    loaded = load_checkpoint(path)
    assert loaded.keys() == original.keys()  # what was saved, not what torch.load reads back twice
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


def test_broken_files_are_one_line_errors_in_our_words(tmp_path, model):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(checkpoint_of(model), path)
    whole = path.read_bytes()
    cases = {
        "truncated.pth": (whole[: len(whole) // 2], "a damaged or truncated checkpoint archive"),
        "text.pth": (b"not a checkpoint at all\n" * 3, "not a PyTorch checkpoint"),
        "empty.pth": (b"", "is empty (0 bytes)"),
    }
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        message = one_line_error(tmp_path / name, words)
        assert "weights_only" not in message and "\x1b" not in message
    one_line_error(tmp_path, "is a folder")


class NotATensor:
    pass


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch should-never-exist",))


@pytest.mark.parametrize(
    "payload, found",
    [
        (NotATensor(), f"{__name__}.NotATensor"),
        (RunsCode(), f"{os.system.__module__}.system"),
        (np.zeros(3), "numpy."),
    ],
)
def test_files_needing_unpickling_are_refused_in_our_words(tmp_path, monkeypatch, payload, found):
    """torch's own refusal suggests weights_only=False and holds escape codes; ours names the file and what
    it found, on one line, and nothing is run."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "pickle.pth"
    torch.save({"format": "fnoise_maskrcnn", "payload": payload}, path)
    for load in (load_checkpoint, load_state_dict_file, model_from_checkpoint):
        with pytest.raises(CheckpointError) as info:
            load(path)
        message = str(info.value)
        assert message.startswith(f"{path}: contains a pickled Python object ({found}"), message
        assert "refused; this package never unpickles code" in message
        assert "\n" not in message and "\x1b" not in message and "weights_only" not in message
    assert not (tmp_path / "should-never-exist").exists()


def test_a_plain_pickle_is_refused_in_our_words(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    message = one_line_error(path, "refused; this package never unpickles code")
    assert "weights_only" not in message


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c: c["model_config"].update(num_classes=5), "num_classes 5 (background included) but"),
        (lambda c: c.update(categories=CATEGORIES[:1]), "lists 1 categories (expected 2)"),
        (lambda c: c["model_config"].update(num_classes="three"), "num_classes is 'three'"),
    ],
)
def test_self_contradicting_checkpoints_are_refused(tmp_path, model, change, words):
    checkpoint = checkpoint_of(model)
    checkpoint["model_config"] = dict(checkpoint["model_config"])
    change(checkpoint)
    path = tmp_path / "edited.pth"
    torch.save(checkpoint, path)
    message = one_line_error(path, "contradicts itself")
    assert words in message
    with pytest.raises(CheckpointError, match="contradicts itself"):
        model_from_checkpoint(path)


def test_weights_that_contradict_the_config_are_refused(tmp_path, model):
    """num_classes and the categories agree (4 classes) but the predictor weights have 3."""
    checkpoint = checkpoint_of(model)
    checkpoint["model_config"] = {**checkpoint["model_config"], "num_classes": 4}
    checkpoint["categories"] = [*CATEGORIES, {"id": 9, "name": "star"}]
    path = tmp_path / "edited.pth"
    torch.save(checkpoint, path)
    one_line_error(path, "roi_heads.box_predictor.cls_score.weight has 3 classes")
    with pytest.raises(ValueError, match="num_classes 4"):
        make_checkpoint(model.state_dict(), {**model.build_config, "num_classes": 4}, CATEGORIES)


def test_weights_that_do_not_fit_the_model_are_one_line(tmp_path, model):
    checkpoint = checkpoint_of(model)
    state = dict(checkpoint["model"])
    state.pop("backbone.fpn.layer_blocks.0.0.weight")
    state["backbone.body.0.0.weight"] = state["backbone.body.0.0.weight"][:4]
    checkpoint["model"] = state
    path = tmp_path / "edited.pth"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the weights do not fit the model its model_config describes")
    assert "1 missing (e.g. backbone.fpn.layer_blocks.0.0.weight)" in message
    assert "1 of another shape (e.g. backbone.body.0.0.weight: [4," in message and "\n" not in message
    checkpoint = checkpoint_of(model)
    checkpoint["model_config"] = {**checkpoint["model_config"], "arch": "vgg"}
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"edited.pth: its model_config cannot be built \("):
        model_from_checkpoint(path)


def test_make_checkpoint_refuses_to_overwrite_its_fixed_entries(model):
    with pytest.raises(ValueError, match="format"):
        make_checkpoint(model.state_dict(), model.build_config, CATEGORIES, format="other")


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
