"""The detection task: box encoding and decoding, losses on hand-made examples, COCO mAP on fixtures with a
known answer, partial labels, pseudo-labels, and boxes through the data pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from polydistill.config import AugmentConfig
from polydistill.data import FolderDataset, build_train_transform
from polydistill.data.collate import collate
from polydistill.distill import Objective
from polydistill.errors import DataError
from polydistill.tasks import build_task
from polydistill.tasks.detection import coco_map
from tests.conftest import write_tiny_dataset


def det(num_classes: int = 3, **kw):
    task = build_task("detection", num_classes=num_classes, **kw)
    task.stride = 4
    return task


def padded(*boxes):
    """Rows [x0, y0, x1, y1, class] of one image -> (1, M, 5)."""
    return torch.tensor([boxes], dtype=torch.float32)


def test_render_then_decode_gives_the_boxes_back():
    task = det()
    boxes = torch.tensor([[8.0, 4.0, 30.0, 20.0], [40.0, 24.0, 46.0, 31.0], [2.0, 2.0, 5.0, 6.0]])
    labels = torch.tensor([0, 2, 1])
    scores = torch.tensor([0.9, 0.7, 0.5])
    rendered = task.render(boxes, labels, scores, (8, 12))  # a 32x48 image at stride 4
    got_boxes, got_scores, got_labels = task.decode(rendered[None], score_threshold=0.1)[0]
    order = got_scores.argsort(descending=True)
    torch.testing.assert_close(got_boxes[order], boxes)
    torch.testing.assert_close(got_scores[order], scores)
    assert got_labels[order].tolist() == [0, 2, 1]
    # ground truth peaks are exactly 1, and the predicted map of a perfect raw output decodes the same way
    encoded = task.encode(padded([8, 4, 30, 20, 0]), (8, 12))
    assert float(encoded[0, 0].max()) == 1.0 and float(encoded[0, 1:3].max()) == 0.0
    again = task.decode(task.predict(task.raw_from_output(encoded)), score_threshold=0.5)[0][0]
    torch.testing.assert_close(again, boxes[:1], atol=1e-3, rtol=0)


def test_supervised_loss_on_a_hand_made_example():
    """One class, a 3x3 grid, one 10x10 box centred on the middle cell; heat logits 0 (p = 0.5) and box
    distances that predict the box exactly: the loss is the focal term alone, computed here by hand."""
    task = det(num_classes=1)
    target = padded([2, 2, 12, 12, 0])  # centre (7, 7): cell (1, 1) at stride 4
    raw = torch.zeros(1, 5, 3, 3)
    ys, xs = torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij")
    cx, cy = (xs + 0.5) * 4, (ys + 0.5) * 4
    ltrb = torch.stack([cx - 2, cy - 2, 12 - cx, 12 - cy])  # every cell centre is inside or on an edge
    raw[0, 1:] = (ltrb / 4).log()
    loss = task.supervised_loss(raw, target)
    sigma = 0.35  # 0.54 * 10 / 6 / 4 = 0.225 is below the minimum
    g1, g2 = math.exp(-1 / (2 * sigma**2)), math.exp(-2 / (2 * sigma**2))
    focal = math.log(2) * 0.25  # -log(p) (1 - p)^2 = -log(1 - p) p^2 at p = 0.5
    want = focal * (1 + 4 * (1 - g1) ** 4 + 4 * (1 - g2) ** 4)  # one positive: divided by 1
    assert float(loss[0]) == pytest.approx(want, rel=1e-5)
    # a box off by half its size costs GIoU on top
    raw[0, 1:] = (ltrb / 4 * 1.5).log()
    assert float(task.supervised_loss(raw, target)[0]) > want + 0.1


def coco_fixture_metric(task, images):
    metric = task.new_metric()
    for detections, truth in images:
        pred = torch.stack([task.render(d[:, :4], d[:, 5].long(), d[:, 4], (16, 16)) for d in [detections]])
        metric.update(pred, truth)
    return metric.compute()


def test_map_against_pycocotools_on_known_answers():
    task = det(num_classes=2, class_names=["a", "b"], score_threshold=0.01)
    # class a found exactly; class b's only box missed (a detection far away): AP 1 and 0 -> mAP 0.5
    truth = padded([4, 4, 20, 20, 0], [36, 36, 60, 60, 1])
    found = torch.tensor([[4.0, 4.0, 20.0, 20.0, 0.9, 0], [2.0, 40.0, 10.0, 60.0, 0.8, 1]])
    out = coco_fixture_metric(task, [(found, truth)])
    assert out["map50"] == pytest.approx(0.5) and out["map"] == pytest.approx(0.5)
    assert out["ap50/a"] == pytest.approx(1.0) and out["ap50/b"] == pytest.approx(0.0)
    # one box, a higher-scored false positive before the true positive: precision 1/2 at recall 1 -> AP 0.5
    truth = padded([4, 4, 20, 20, 0])
    ranked = torch.tensor([[40.0, 40.0, 60.0, 60.0, 0.9, 0], [4.0, 4.0, 20.0, 20.0, 0.6, 0]])
    out = coco_fixture_metric(task, [(ranked, truth)])
    assert out["map50"] == pytest.approx(0.5, abs=1e-6)
    assert "ap50/b" not in out  # no ground truth of class b: left out, as COCO does
    # the same through coco_map directly, and no ground truth at all is NaN
    rows = torch.tensor([[0, 40.0, 40.0, 60.0, 60.0, 0.9, 0], [0, 4.0, 4.0, 20.0, 20.0, 0.6, 0]])
    assert coco_map(rows, torch.tensor([[0, 4.0, 4.0, 20.0, 20.0, 0]]), 1, ["a", "b"])["map50"] == pytest.approx(0.5)
    assert math.isnan(coco_map(rows, torch.zeros(0, 6), 1, ["a", "b"])["map50"])


def test_an_image_without_boxes_contributes_no_detection_ground_truth_loss():
    task = det(num_classes=3)
    objective = Objective({"detection": task}, {})
    raw = torch.randn(2, 7, 8, 12, requires_grad=True)
    target = torch.cat([padded([4, 4, 20, 20, 2]), torch.full((1, 1, 5), -1.0)])  # image 1: no box file
    batch = {"targets": {"detection": target}, "valid": {"detection": torch.tensor([True, False])}}
    term = objective({"detection": raw}, batch)[("detection", "gt")]
    assert term.mask.tolist() == [True, False]
    term.value.backward()
    assert raw.grad[0].abs().sum() > 0 and raw.grad[1].abs().sum() == 0


def test_pseudo_labels_keep_the_teacher_boxes_above_the_threshold():
    task = det(num_classes=3, distill="pseudo", pseudo_threshold=0.3)
    teacher = task.render(torch.tensor([[4.0, 4.0, 20.0, 20.0], [28.0, 8.0, 44.0, 28.0]]), torch.tensor([0, 1]),
                          torch.tensor([0.8, 0.2]), (8, 12))[None]
    raw = torch.randn(1, 7, 8, 12)
    want = task.supervised_loss(raw, padded([4, 4, 20, 20, 0]))  # only the 0.8 box survives
    torch.testing.assert_close(task.distill_loss(raw, teacher), want)
    lower = det(num_classes=3, distill="pseudo", pseudo_threshold=0.1)
    torch.testing.assert_close(lower.distill_loss(raw, teacher),
                               lower.supervised_loss(raw, padded([4, 4, 20, 20, 0], [28, 8, 44, 28, 1])))


def test_soft_distillation_is_smallest_at_the_teacher():
    task = det(num_classes=3)
    teacher = task.render(torch.tensor([[4.0, 4.0, 20.0, 20.0]]), torch.tensor([1]), torch.tensor([0.9]),
                          (8, 12))[None]
    at_teacher = task.raw_from_output(teacher.clamp_min(1e-4))
    away = at_teacher + torch.randn_like(at_teacher)
    assert float(task.distill_loss(at_teacher, teacher)[0]) < 0.05
    assert float(task.distill_loss(away, teacher)[0]) > float(task.distill_loss(at_teacher, teacher)[0]) + 0.1


def test_boxes_through_the_folder_dataset_augmentation_and_collate(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", 4, seed=3, labels=[("depth", "semseg", "boxes")] * 3 + [("depth",)])
    plain = FolderDataset(root, ("semseg", "detection"))
    sample = plain[0]
    x0, y0, x1, y1, label = sample["targets"]["detection"][0].tolist()
    assert label == 2 and (sample["targets"]["semseg"][int(y0):int(y1), int(x0):int(x1)] == 2).all()
    flipped = FolderDataset(root, ("semseg", "detection"), transform=build_train_transform(
        AugmentConfig(hflip=1.0, scale=(1.0, 1.0))))[0]
    fx0, _, fx1, _, _ = flipped["targets"]["detection"][0].tolist()
    assert (fx0, fx1) == (48 - x1, 48 - x0)
    batch = collate([plain[i] for i in range(4)])
    assert batch["targets"]["detection"].shape == (4, 1, 5)
    assert batch["valid"]["detection"].tolist() == [True, True, True, False]
    assert (batch["targets"]["detection"][3] == -1).all()


def test_a_box_label_outside_the_classes_names_the_file(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", 2, seed=3, labels=("semseg", "boxes"))
    (root / "boxes" / "0001.json").write_text(json.dumps({"boxes": [[0, 0, 4, 4]], "labels": [7]}))
    data = FolderDataset(root, ("detection",))
    data[0]
    with pytest.raises(DataError, match=r"0001\.json.*\[7\].*0\.\.2"):
        data[1]


def test_a_detection_teacher_map_follows_flip_and_zoom_like_its_boxes():
    """Cached detection maps live on the stride grid: flipped and zoom-cropped with the image, they decode to
    the boxes moved the same way (to a cell). A flip is exact; a zoom resamples the heat-maps bilinearly,
    which lowers narrow peaks (here 0.9 -> 0.43 and 0.8 -> 0.15 at 1.5x), so the zoom case decodes at 0.1."""
    task = det(num_classes=3)
    boxes = torch.tensor([[8.0, 8.0, 24.0, 20.0], [28.0, 12.0, 44.0, 28.0]])
    teacher_map = task.render(boxes, torch.tensor([0, 1]), torch.tensor([0.9, 0.8]), (8, 12))
    sample = {"image": torch.rand(3, 32, 48), "targets": {}, "valid": {},
              "teacher": {"t": {"detection": teacher_map}},
              "meta": {"boxes": boxes.clone(), "box_labels": torch.tensor([0, 1]), "intrinsics": None}}
    for hflip, scale in ((1.0, (1.0, 1.0)), (0.0, (1.5, 1.5))):
        transform = build_train_transform(AugmentConfig(hflip=hflip, scale=scale))
        out = transform(sample, np.random.default_rng(0))
        moved = out["teacher"]["t"]["detection"]
        assert moved.shape == teacher_map.shape
        got, scores, labels = task.decode(moved[None], score_threshold=0.3 if hflip else 0.1)[0]
        if hflip:
            torch.testing.assert_close(scores.sort().values, torch.tensor([0.8, 0.9]))
        want = out["meta"]["boxes"]
        for label, box in zip(out["meta"]["box_labels"].tolist(), want):
            if box[0] <= 0 or box[1] <= 0 or box[2] >= 48 or box[3] >= 32:
                continue  # cut by the crop: its visible centre is not the teacher's
            match = got[labels == label]
            assert len(match) >= 1
            assert (match - box).abs().max(1).values.min() < 4.0, (hflip, scale, match, box)


def test_coco_style_box_files_read_like_the_native_ones(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", 3, seed=3, labels=("semseg", "boxes"))
    native = FolderDataset(root, ("detection",))[0]["targets"]["detection"]
    x0, y0, x1, y1, label = native[0].tolist()
    coco = {"annotations": [{"bbox": [x0, y0, x1 - x0, y1 - y0], "category": "box"},
                            {"bbox": [1, 2, 3, 4], "category_id": 0}]}
    (root / "boxes" / "0000.json").write_text(json.dumps(coco))
    got = FolderDataset(root, ("detection",))[0]["targets"]["detection"]
    torch.testing.assert_close(got, torch.tensor([[x0, y0, x1, y1, label], [1.0, 2.0, 4.0, 6.0, 0.0]]))
    (root / "boxes" / "0001.json").write_text(json.dumps({"annotations": [{"bbox": [0, 0, 2, 2], "category": "cat"}]}))
    with pytest.raises(DataError, match=r"0001\.json.*category 'cat'.*classes\.yaml"):
        FolderDataset(root, ("detection",))[1]


def test_the_head_width_and_depth_options_shape_the_student_head():
    from polydistill.config import StudentConfig
    from polydistill.errors import ConfigError
    from polydistill.students.student import Student

    deep = det(head_convs=2, head_channels=24)
    student = Student({"detection": deep}, StudentConfig(neck_channels=16))
    convs = [m for m in student.heads["detection"].stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(16, 24), (24, 24)]
    out = student(torch.rand(2, 3, 64, 96))["detection"]
    assert out.shape == (2, deep.out_channels, 16, 24)  # stays on the stride-4 grid
    plain = Student({"detection": det()}, StudentConfig(neck_channels=16, head_channels=8))
    assert [m.out_channels for m in plain.heads["detection"].stem if isinstance(m, torch.nn.Conv2d)] == [8]
    with pytest.raises(ConfigError, match="head_convs"):
        det(head_convs=0)
