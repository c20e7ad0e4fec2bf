"""Shipped class maps: ADE20K's 150 classes onto Cityscapes-19 and NYUv2-13."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import polydistill
from polydistill.teachers.class_map import ClassMap

MAPS = Path(polydistill.__file__).parent / "class_maps"

CITYSCAPES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
              "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
              "motorcycle", "bicycle"]
NYUV2_13 = ["bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "painting", "sofa",
            "table", "tv", "wall", "window"]

CASES = {
    "ade20k_to_cityscapes19.yaml": (
        CITYSCAPES,
        {"sky": "sky", "road": "road", "sidewalk": "sidewalk", "building": "building", "tree": "vegetation",
         "grass": "terrain", "person": "person", "car": "car", "van": "car", "minibike": "motorcycle",
         "traffic light": "traffic light", "signboard": "traffic sign"},
        ["ceiling", "bed ", "tower"],
    ),
    "ade20k_to_nyuv2_13.yaml": (
        NYUV2_13,
        {"bed ": "bed", "book": "books", "ceiling": "ceiling", "swivel chair": "chair", "rug": "floor",
         "wardrobe": "furniture", "lamp": "objects", "painting": "painting", "sofa": "sofa",
         "desk": "table", "television receiver": "tv", "door": "wall", "windowpane": "window"},
        ["sky", "road", "car"],
    ),
}


def _load(name: str) -> ClassMap:
    student_classes, _, _ = CASES[name]
    return ClassMap.from_file(MAPS / name, None, student_classes)


@pytest.mark.parametrize("name", sorted(CASES))
def test_map_loads_with_all_150_ade_classes(name):
    cmap = _load(name)
    assert len(cmap.teacher_classes) == 150 and len(set(cmap.teacher_classes)) == 150
    ade = cmap.teacher_classes
    assert ade[:8] == ["wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed "]
    assert ade[149] == "flag"
    # Many-to-one: every teacher class lands in exactly one row (a student class or "unmapped").
    assert cmap.matrix.shape == (len(cmap.student_classes) + 1, 150)
    assert torch.equal(cmap.matrix.sum(0), torch.ones(150))
    # The file declares the same student classes it is checked against.
    declared = yaml.safe_load((MAPS / name).read_text())["student_classes"]
    assert declared == CASES[name][0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_key_correspondences(name):
    cmap = _load(name)
    _, expected, unmapped = CASES[name]
    for teacher_class, student_class in expected.items():
        col = cmap.teacher_classes.index(teacher_class)
        row = cmap.student_classes.index(student_class)
        assert cmap.matrix[row, col] == 1, f"{teacher_class!r} should map to {student_class!r}"
    for teacher_class in unmapped:
        assert teacher_class in cmap.unmapped


@pytest.mark.parametrize("name", sorted(CASES))
def test_apply_gives_a_distribution_over_student_classes_plus_unmapped(name):
    cmap = _load(name)
    torch.manual_seed(0)
    out = cmap.apply(torch.randn(1, 150, 4, 4))
    assert out.shape == (1, len(cmap.student_classes) + 1, 4, 4)
    assert torch.allclose(out.exp().sum(1), torch.ones(1, 4, 4), atol=1e-3)


def test_cityscapes_classes_missing_from_ade_are_empty():
    cmap = _load("ade20k_to_cityscapes19.yaml")
    for name in ("rider", "train"):
        assert cmap.matrix[cmap.student_classes.index(name)].sum() == 0
