"""ONNX teachers: a tiny torch model exported to ONNX teaches the same values through ONNX Runtime."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from polydistill.errors import ConfigError  # noqa: E402
from polydistill.teachers.onnx import OnnxTeacher  # noqa: E402
from tests.distill_check import assert_distills  # noqa: E402

DYNAMIC = {0: "b", 2: "h", 3: "w"}


class TinyDense(nn.Module):
    """Positive depth (B, 1, H, W) and segmentation logits (B, K, H, W) from one convolution."""

    def __init__(self, classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 1 + classes, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return F.softplus(y[:, :1]) + 0.1, y[:, 1:]


def export(model: nn.Module, path, *, dynamic: bool = True, size=(16, 20), batch: int = 1,
           output_names=("depth", "semseg")):
    model.eval()
    axes = {name: DYNAMIC for name in ("image", *output_names)} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(batch, 3, *size),), str(path), dynamo=False,
                          input_names=["image"], output_names=list(output_names), dynamic_axes=axes)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = TinyDense(classes=3).eval()
    path = export(model, tmp_path_factory.mktemp("onnx") / "dense.onnx")
    return model, path


def test_predicts_the_torch_models_values(exported):
    model, path = exported
    teacher = OnnxTeacher("t", path)
    assert teacher.tasks == ("depth", "semseg")  # default: the outputs named after tasks
    assert teacher.depth_convention == "metric"
    images = torch.rand(2, 3, 24, 32)
    out = teacher.predict(images)
    depth, logits = model(images)
    assert out["depth"].shape == (2, 1, 24, 32) and out["semseg"].shape == (2, 3, 24, 32)
    torch.testing.assert_close(out["depth"], depth, atol=1e-4, rtol=0)
    torch.testing.assert_close(out["semseg"], logits, atol=1e-4, rtol=0)
    assert list(teacher.parameters()) == []
    assert teacher.freeze() is teacher and teacher.to("cpu") is teacher
    clone = copy.deepcopy(teacher)  # the session is rebuilt from the file
    torch.testing.assert_close(clone.predict(images)["depth"], out["depth"])
    assert_distills(teacher)


def test_outputs_option_and_tasks(exported):
    model, path = exported
    teacher = OnnxTeacher("t", path, options={"outputs": {"depth": "depth"}})
    assert teacher.tasks == ("depth",)
    assert set(teacher.predict(torch.rand(1, 3, 8, 8))) == {"depth"}
    only_seg = OnnxTeacher("t", path, tasks=["semseg"])
    assert only_seg.tasks == ("semseg",)


def test_normalisation_and_fixed_input_size(tmp_path):
    model = TinyDense(classes=3, seed=1).eval()
    path = export(model, tmp_path / "fixed.onnx", dynamic=False, size=(16, 20), batch=1)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    teacher = OnnxTeacher("fixed", path, options={"mean": mean, "std": std})
    images = torch.rand(2, 3, 24, 30)  # other size and batch than the static (1, 3, 16, 20): resized, chunked
    out = teacher.predict(images)
    assert out["depth"].shape == (2, 1, 24, 30) and out["semseg"].shape == (2, 3, 24, 30)
    x = F.interpolate(images, size=(16, 20), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    depth = F.interpolate(model(x)[0], size=(24, 30), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["depth"], depth, atol=1e-4, rtol=0)


def test_wrong_output_name_lists_the_models_outputs(exported):
    _, path = exported
    with pytest.raises(ConfigError, match=r"'dpeth'.*\['depth', 'semseg'\]"):
        OnnxTeacher("t", path, options={"outputs": {"depth": "dpeth"}})
    with pytest.raises(ConfigError, match="cannot teach"):
        OnnxTeacher("t", path, options={"outputs": {"normals": "depth"}})


def test_bad_options_and_missing_file(exported, tmp_path):
    _, path = exported
    with pytest.raises(ConfigError, match=r"'bad' \(ONNX options\): unknown option 'input_sise' — did you mean"):
        OnnxTeacher("bad", path, options={"input_sise": [8, 8]})
    with pytest.raises(ConfigError, match=r"'bad' \(ONNX options\): option 'mean': List should have at least 3"):
        OnnxTeacher("bad", path, options={"mean": [0.5, 0.5]})
    with pytest.raises(ConfigError, match="ONNX file not found"):
        OnnxTeacher("gone", tmp_path / "missing.onnx")


def test_class_map_gives_student_log_probabilities(tmp_path):
    path = export(TinyDense(classes=5, seed=2), tmp_path / "seg5.onnx")
    map_file = tmp_path / "map.yaml"
    map_file.write_text("map:\n  floor: [a, b]\n  wall: [c]\n")
    teacher = OnnxTeacher("seg", path, tasks=["semseg"], class_map=str(map_file), student_classes=["floor", "wall"],
                          options={"class_names": ["a", "b", "c", "d", "e"]})
    out = teacher.predict(torch.rand(2, 3, 12, 16))["semseg"]
    assert out.shape == (2, 3, 12, 16)  # floor, wall, unmapped (d + e)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2, 12, 16), atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="predicts 5 classes but the student has 2"):
        OnnxTeacher("seg", path, tasks=["semseg"], student_classes=["floor", "wall"])


def test_fingerprint_follows_the_file(tmp_path):
    path = export(TinyDense(seed=3), tmp_path / "m.onnx")
    first = OnnxTeacher("t", path).fingerprint()
    assert len(first) == 16 and first == OnnxTeacher("t", path).fingerprint()
    export(TinyDense(seed=4), path)
    assert OnnxTeacher("t", path).fingerprint() != first
