"""Boxes that cannot be right are never silent (issue 18, review rows 34 and 39-43).

Rules: the folder layout refuses box labels that are not integers (1.7, true, "wall") and files whose boxes look
normalised (every coordinate in 0..1, some a fraction); `data check` reports boxes entirely outside the image, of
zero area, at negative coordinates or past the border, and an ignore index that is also a class; training clips
boxes to the image and drops those left without area (entirely outside, zero area) with a counted warning.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from polydistill.cli import app
from polydistill.data.check import check_dataset
from polydistill.data.layouts.folder import _read_boxes, fit_boxes_to_image
from polydistill.errors import DataError
from tests.conftest import write_tiny_dataset

H, W = 32, 48


def boxes_dataset(tmp_path, boxes, labels=None):
    """A 2-image folder dataset (32x48) whose first image's boxes file is replaced by ``boxes``."""
    root = write_tiny_dataset(tmp_path / "data", 2, seed=0, labels=("depth", "semseg", "boxes"))
    payload = {"boxes": boxes, "labels": labels if labels is not None else [2] * len(boxes)}
    (root / "boxes" / "0000.json").write_text(json.dumps(payload))
    return root


def check(root) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["data", "check", str(root), "--no-progress"])
    return result.exit_code, result.output


@pytest.mark.parametrize("label", [1.7, True, "wall"])
def test_a_label_that_is_not_an_integer_is_refused_naming_the_file(tmp_path, label):
    root = boxes_dataset(tmp_path, [[1, 2, 10, 12]], [label])
    with pytest.raises(DataError, match=r"0000\.json: label 0 is .*not an integer class id"):
        _read_boxes(root / "boxes" / "0000.json", 3)


def test_an_integral_float_label_is_read_as_that_class(tmp_path):
    root = boxes_dataset(tmp_path, [[1, 2, 10, 12]], [2.0])
    assert _read_boxes(root / "boxes" / "0000.json", 3)[1].tolist() == [2]


def test_normalised_boxes_are_refused_saying_pixel_units_expected(tmp_path):
    root = boxes_dataset(tmp_path, [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 0.25]])
    with pytest.raises(DataError, match=r"0000\.json: .*normalised; pixel units expected"):
        _read_boxes(root / "boxes" / "0000.json", 3)
    code, output = check(root)
    assert code == 1 and "pixel units expected" in output


def test_whole_pixel_boxes_in_the_corner_are_not_taken_for_normalised(tmp_path):
    root = boxes_dataset(tmp_path, [[0, 0, 1, 1]])
    assert _read_boxes(root / "boxes" / "0000.json", 3)[0].tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_check_reports_a_box_entirely_outside_the_image(tmp_path):
    code, output = check(boxes_dataset(tmp_path, [[500, 600, 900, 1000]]))
    assert code == 1 and "0000.json: 1 box(es) lie entirely outside the 32x48 (HxW) image" in output


def test_check_reports_a_box_at_negative_coordinates_fully_outside(tmp_path):
    code, output = check(boxes_dataset(tmp_path, [[-30, -20, -5, -2]]))
    assert code == 1 and "entirely outside" in output


def test_check_reports_a_box_at_negative_coordinates_partly_inside(tmp_path):
    code, output = check(boxes_dataset(tmp_path, [[-4, 2, 10, 12]]))
    assert code == 1 and "negative coordinates, e.g. (-4, 2, 10, 12)" in output


def test_check_reports_a_zero_area_box(tmp_path):
    code, output = check(boxes_dataset(tmp_path, [[10, 10, 10, 10]]))
    assert code == 1 and "1 box(es) have zero area" in output


def test_check_reports_a_box_past_the_border(tmp_path):
    code, output = check(boxes_dataset(tmp_path, [[40, 20, 60, 40]]))
    assert code == 1 and "extend past the 32x48 (HxW) image" in output


def test_check_passes_boxes_that_fit(tmp_path):
    code, output = check(boxes_dataset(tmp_path, [[0, 0, W, H], [3, 4, 5, 6]]))
    assert code == 0, output


def test_check_reports_the_ignore_index_apart_when_it_is_a_class(tmp_path):
    root = write_tiny_dataset(tmp_path / "data", 2, seed=0)
    (root / "classes.yaml").write_text("names: [floor, wall, box]\nignore_index: 0\n")
    [report] = check_dataset(root)
    assert report.ignore_index == 0 and "also class 0 'floor'" in report.classes_problem
    code, output = check(root)
    assert code == 1 and "ignore_index 0 is also class 0 'floor'" in output


def test_check_exits_2_when_a_dataset_cannot_be_opened(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    code, output = check(tmp_path / "data")
    assert code == 2 and "cannot be opened" in output


def test_training_clips_partly_outside_boxes_and_drops_empty_ones():
    boxes = torch.tensor([[-4.0, 2, 10, 12], [40, 20, 60, 40], [500, 600, 900, 1000], [10, 10, 10, 10], [1, 1, 5, 5]])
    labels = torch.tensor([0, 1, 2, 1, 0])
    kept, kept_labels, dropped = fit_boxes_to_image(boxes, labels, (H, W))
    assert dropped == 2 and kept_labels.tolist() == [0, 1, 0]
    assert kept.tolist() == [[0, 2, 10, 12], [40, 20, 48, 32], [1, 1, 5, 5]]


def test_training_keeps_boxes_that_fit_as_the_same_tensors():
    boxes, labels = torch.tensor([[0.0, 0, W, H], [1.5, 2, 3, 4]]), torch.tensor([1, 2])
    kept, kept_labels, dropped = fit_boxes_to_image(boxes, labels, (H, W))
    assert kept is boxes and kept_labels is labels and dropped == 0


def test_training_drops_boxes_outside_the_image_with_a_counted_warning(tmp_path):
    from polydistill.data import FolderDataset

    root = boxes_dataset(tmp_path, [[-4, 2, 10, 12], [500, 600, 900, 1000], [10, 10, 10, 10]], [0, 1, 2])
    with pytest.warns(UserWarning, match=r"0000\.png: dropped 2 box\(es\) entirely outside the 32x48 image"):
        target = FolderDataset(root, ("detection",))[0]["targets"]["detection"]
    assert target.tolist() == [[0, 2, 10, 12, 0]]
