"""Export to ONNX and TorchScript: no F-Noise in the graph, dynamic image size, same outputs as PyTorch."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from fnoise_maskrcnn.deploy.agreement import compare_detections, exported_resize
from fnoise_maskrcnn.export import main as export_main
from fnoise_maskrcnn.io.images import read_image_tensor
from fnoise_maskrcnn.io.model_io import model_from_checkpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def assert_same_detections(expected: dict, actual: dict, score_thresh: float) -> int:
    """Every strong detection in either output has a partner in the other (same label, box and score,
    soft masks close on average: :func:`fnoise_maskrcnn.deploy.agreement.compare_detections`'s default
    tolerances). Returns the match count."""
    matched, problems = compare_detections(expected, actual, score_thresh)
    assert not problems, problems[0]
    return matched


@pytest.fixture(scope="module")
def pytorch_model(inference_checkpoint):
    model, checkpoint = model_from_checkpoint(inference_checkpoint)
    return model, checkpoint


@pytest.fixture(scope="module")
def val_images(synthetic_coco):
    """The four synthetic val images (128-192 px, all of different sizes)."""
    images = sorted(json.loads(synthetic_coco.val_ann.read_text())["images"], key=lambda img: img["id"])
    return [read_image_tensor(synthetic_coco.val_images / img["file_name"]) for img in images]


@pytest.fixture(scope="module")
def onnx_file(inference_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert (
        export_main(["--checkpoint", str(inference_checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    )
    return out


def run_onnx(session, image: torch.Tensor) -> dict:
    boxes, labels, scores, masks = session.run(None, {"image": image.numpy()})
    return {"boxes": boxes, "labels": labels, "scores": scores, "masks": masks}


def test_onnx_matches_pytorch_on_unscaled_images_of_different_sizes(onnx_file, pytorch_model, val_images):
    """Dynamic height and width: crops that the model's transform does not rescale, in three shapes."""
    model, _ = pytorch_model
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    tiled = [
        torch.cat([torch.cat([i, i.flip(2)], 2), torch.cat([i.flip(1), i], 2)], 1) for i in val_images[:3]
    ]
    crops = [tiled[0][:, :128, :128], tiled[1][:, :128, :160], tiled[2][:, :160, :128]]
    matched = 0
    with torch.inference_mode():
        for image in crops:
            expected = model([image])[0]
            actual = run_onnx(session, image)
            assert actual["masks"].shape[1:] == (1, *image.shape[1:])
            matched += assert_same_detections(expected, actual, model.roi_heads.score_thresh)
    assert matched >= 2  # the comparison did compare something


def test_onnx_rescales_images_as_pytorch_does(onnx_file, pytorch_model, val_images):
    """The graph's resize (its only bilinear Resize: the model's transform) gives eager PyTorch's image
    within float32 rounding, except for the size rule: where float32 and float64 floor differently, the
    exported image is one pixel off in one dimension.

    Whole-model detections on rescaled images are not compared: the random-weight test network turns
    an input difference of 1e-4 into feature differences of order 1 (in eager PyTorch alone too), so
    rounding-level differences in the resize change its detections.
    """
    model, _ = pytorch_model
    proto = onnx.load(str(onnx_file))
    (resize,) = [
        node
        for node in proto.graph.node
        if node.op_type == "Resize" and any(a.name == "mode" and a.s == b"linear" for a in node.attribute)
    ]
    resized = resize.output[0]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(resized, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    tiled = val_images[0].repeat(1, 3, 3)  # at least 384 px each way
    crops = [tiled[:, :177, :133], tiled[:, :185, :161], tiled[:, :140, :190], tiled[:, :300, :200]]
    compared = one_pixel = 0
    for image in [*val_images, *crops]:
        with torch.inference_mode():
            image_list, _ = model.transform([image])
        height, width = image_list.image_sizes[0]
        expected = image_list.tensors[..., :height, :width]
        actual = torch.from_numpy(session.run([resized], {"image": image.numpy()})[0])
        assert (height, width) != tuple(image.shape[1:]), "the transform was meant to rescale this image"
        traced = exported_resize(*image.shape[1:], model.transform.min_size[-1], model.transform.max_size)
        assert tuple(actual.shape[2:]) == traced
        if traced == (height, width):
            assert (expected - actual).abs().max() <= 5e-4  # normalised pixel values, roughly [-2, 2.6]
            compared += 1
        else:
            assert sorted(abs(a - b) for a, b in zip(traced, (height, width))) == [0, 1]
            one_pixel += 1
    assert compared >= 4 and one_pixel >= 1  # both cases occurred


def test_onnx_image_without_detections(onnx_file, pytorch_model, val_images):
    model, _ = pytorch_model
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        empty = [image for image in val_images if model([image])[0]["boxes"].shape[0] == 0]
    assert empty, "the test model detects something in every val image; no image without detections to test"
    image = empty[0]
    actual = run_onnx(session, image)
    assert (
        actual["boxes"].shape == (0, 4) and actual["scores"].shape == (0,) and actual["labels"].shape == (0,)
    )
    assert actual["masks"].shape == (0, 1, *image.shape[1:])


def test_onnx_graph_has_no_f_noise_and_carries_categories(onnx_file, pytorch_model):
    _, checkpoint = pytorch_model
    assert checkpoint["model_config"]["f_noise"]["enabled"]  # the checkpoint does use F-Noise
    proto = onnx.load(str(onnx_file))
    names = [node.name for node in proto.graph.node] + [init.name for init in proto.graph.initializer]
    assert names and not [n for n in names if "f_noise" in n.lower() or "fnoise" in n.lower()]
    assert [i.name for i in proto.graph.input] == ["image"]
    height, width = (d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim[1:])
    assert (height, width) == ("height", "width")  # symbolic, not fixed to the example's size
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata["categories"]) == checkpoint["categories"]


def test_torchscript_has_no_f_noise_and_matches_pytorch(
    inference_checkpoint, pytorch_model, val_images, tmp_path
):
    model, checkpoint = pytorch_model
    out = tmp_path / "model.pt"
    assert (
        export_main(["--checkpoint", str(inference_checkpoint), "--format", "torchscript", "--out", str(out)])
        == 0
    )
    extra = {"categories.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["categories.json"]) == checkpoint["categories"]
    assert not [name for name, _ in scripted.named_modules() if "f_noise" in name]
    assert "f_noise" not in scripted.backbone.code
    # Scripted torchvision computes the resize scale in float32, eager PyTorch in float64; for some
    # sizes the resized image differs by a pixel, and this random-weight model's near-threshold scores
    # amplify that. 128x128 crops reach the working size (128-160 px) unscaled.
    with torch.inference_mode():
        for image in (val_images[0][:, :128, :128], val_images[1][:, :128, :128]):
            expected = model([image])[0]
            _, detections = scripted([image])
            for key in ("boxes", "labels", "scores", "masks"):
                torch.testing.assert_close(detections[0][key], expected[key], rtol=1e-4, atol=1e-4)


def test_export_errors_are_one_line(tmp_path, capsys):
    assert (
        export_main(
            [
                "--checkpoint",
                str(tmp_path / "missing.pth"),
                "--format",
                "onnx",
                "--out",
                str(tmp_path / "m.onnx"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing.pth" in err and "\n" not in err
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(SystemExit) as exc:
        export_main(["--checkpoint", "x.pth", "--format", "tflite", "--out", "m"])
    assert exc.value.code == 2
