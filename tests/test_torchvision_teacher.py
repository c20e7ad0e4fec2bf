"""torchvision teachers: offline (random weights), frozen, semseg in student space, clear errors."""

from __future__ import annotations

import time

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from polydistill.errors import ConfigError
from polydistill.teachers.torchvision_models import IMAGENET_MEAN, IMAGENET_STD, TorchvisionTeacher
from tests.distill_check import assert_distills

MODEL = "lraspp_mobilenet_v3_large"  # the smallest segmentation model
RANDOM = {"weights": "none", "num_classes": 3}


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def test_random_teacher_is_frozen_and_answers_at_input_size():
    teacher = TorchvisionTeacher("tv", MODEL, options=RANDOM)
    teacher.train()  # must not leave eval mode
    assert teacher.tasks == ("semseg",)
    assert not teacher.training and not teacher.model.training
    assert all(not p.requires_grad for p in teacher.parameters())
    out = teacher.predict(torch.rand(2, 3, 64, 48))
    assert set(out) == {"semseg"} and out["semseg"].shape == (2, 3, 64, 48)
    assert not out["semseg"].requires_grad and bool(torch.isfinite(out["semseg"]).all())
    assert_distills(teacher)


def test_weights_file_loads_strictly_and_matches_the_module(tmp_path):
    torch.manual_seed(0)
    module = torchvision.models.get_model(MODEL, weights=None, weights_backbone=None, num_classes=3).eval()
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    teacher = TorchvisionTeacher("tv", MODEL, options={"weights_file": str(path)})  # num_classes inferred
    assert teacher.num_classes == 3
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = module(_normalise(images))["out"]
    torch.testing.assert_close(teacher.predict(images)["semseg"], expected)


def test_weights_file_that_does_not_fit_is_a_config_error(tmp_path):
    module = torchvision.models.get_model(MODEL, weights=None, weights_backbone=None, num_classes=3)
    path = tmp_path / "teacher.pth"
    torch.save(module.state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit"):
        TorchvisionTeacher("tv", MODEL, options={"weights_file": str(path), "num_classes": 4})


def test_unknown_model_or_option_suggests_the_right_name():
    with pytest.raises(ConfigError, match="did you mean 'lraspp_mobilenet_v3_large'"):
        TorchvisionTeacher("tv", "lraspp_mobilenet_v3_larg", options=RANDOM)
    with pytest.raises(ConfigError, match="did you mean 'num_classes'"):
        TorchvisionTeacher("tv", MODEL, options={"weights": "none", "num_class": 3})
    with pytest.raises(ConfigError, match="did you mean 'COCO_WITH_VOC_LABELS_V1'"):
        TorchvisionTeacher("tv", MODEL, options={"weights": "COCO_WITH_VOC_LABELS"})


def test_only_semseg_is_taught():
    with pytest.raises(ConfigError, match="semseg only"):
        TorchvisionTeacher("tv", MODEL, tasks=["depth"], options=RANDOM)


def test_named_weights_that_are_not_cached_fail_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # so get_dir() follows TORCH_HOME
    start = time.monotonic()
    with pytest.raises(ConfigError, match="not cached") as info:
        TorchvisionTeacher("tv", MODEL, options={"weights": "DEFAULT"})
    assert time.monotonic() - start < 5
    assert "weights_file" in str(info.value)
    assert not (tmp_path / "empty_torch_home").exists()  # nothing was downloaded


def test_class_map_onto_student_classes(tmp_path):
    mapping = tmp_path / "map.yaml"
    mapping.write_text("teacher_classes: [background, floor, carpet, wall, person]\n"
                       "map:\n  floor: [floor, carpet]\n  wall: [wall]\n")
    teacher = TorchvisionTeacher("tv", MODEL, class_map=str(mapping), student_classes=["floor", "wall"],
                                 options={"weights": "none", "num_classes": 5})
    out = teacher.predict(torch.rand(1, 3, 64, 64))["semseg"]
    assert out.shape == (1, 3, 64, 64)  # C + 1 (last: unmapped background/person)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(1, 64, 64), atol=1e-4, rtol=0)


def test_other_classes_without_a_class_map_ask_for_one():
    with pytest.raises(ConfigError, match="class_map"):
        TorchvisionTeacher("tv", MODEL, student_classes=["floor", "wall", "person"],
                           options={"weights": "none", "num_classes": 5})
