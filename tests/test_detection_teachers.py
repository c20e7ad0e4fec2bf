"""Detection teachers (torchvision detectors, hf DETR family): boxes rendered into the detection task space.

Offline only: torchvision models with random weights, tiny transformers models built from a config and saved
to a folder (loaded through the real ``hf:`` path). One test per source replaces the model's forward with known
outputs, so the box -> map path (label mapping by name or class map, dropped classes and scores) is checked
exactly against :meth:`DetectionTask.decode`.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
import torchvision
import transformers
from safetensors.torch import save_file

from polydistill.config import TeacherConfig
from polydistill.errors import ConfigError
from polydistill.teachers import TorchvisionTeacher, build_teacher
from polydistill.teachers.hf_detection import HuggingFaceDetectionTeacher
from polydistill.teachers.torchvision_detection import TorchvisionDetectionTeacher
from tests.distill_check import assert_distills

MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"  # the cheapest torchvision detector
NAMES = ["__background__", "person", "dog", "car"]  # label ids 0..3 of the random models below
RANDOM = {"weights": "none", "num_classes": 4, "class_names": NAMES}


def tv_teacher(students=None, class_map=None, **options) -> TorchvisionDetectionTeacher:
    cfg = TeacherConfig(name="tv", path=f"torchvision:{MODEL}", class_map=class_map, options={**RANDOM, **options})
    return build_teacher(cfg, {"detection": students})


def decoded(teacher, out: torch.Tensor) -> list[tuple[list, list, list]]:
    """Per image the (boxes, scores, labels) the task decodes from a teacher map, sorted by score."""
    result = []
    for boxes, scores, labels in teacher.task.decode(out, score_threshold=teacher.min_score):
        order = scores.argsort(descending=True)
        result.append((boxes[order], scores[order], labels[order]))
    return result


# ------------------------------------------------------------------------------------------------ torchvision


def test_torchvision_detector_answers_on_the_stride_grid_at_input_resolution():
    torch.manual_seed(0)
    teacher = tv_teacher(min_score=0.0)
    assert isinstance(teacher, TorchvisionDetectionTeacher) and teacher.tasks == ("detection",)
    assert teacher.detection_classes == ["person", "dog", "car"]  # its own classes less the background
    teacher.train()
    assert not teacher.training and not teacher.model.training
    assert all(not p.requires_grad for p in teacher.parameters())
    seen = []
    teacher.model.transform.register_forward_hook(lambda m, i, o: seen.extend(o[0].image_sizes))
    out = teacher.predict(torch.rand(2, 3, 64, 46))["detection"]
    assert out.shape == (2, 3 + 4, 16, math.ceil(46 / 4))
    assert seen == [(64, 46), (64, 46)]  # torchvision's internal resize left the input resolution alone
    assert torch.isfinite(out).all() and not out.requires_grad and out[:, :3].max() > 0  # random boxes rendered
    assert_distills(teacher)


def fake_torchvision_forward(per_image):
    def forward(images, targets=None):
        assert isinstance(images, list) and all(i.shape[0] == 3 for i in images)
        return [{"boxes": torch.tensor(b, dtype=torch.float32), "labels": torch.tensor(lab),
                 "scores": torch.tensor(s)} for b, lab, s in per_image]

    return forward


def test_torchvision_boxes_render_into_maps_that_decode_to_them(monkeypatch):
    teacher = tv_teacher(students=["car", "person"])  # by name, in the student's order; 'dog' is no student class
    assert teacher.label_lookup.tolist() == [-1, 1, -1, 0]
    monkeypatch.setattr(teacher.model, "forward", fake_torchvision_forward([
        ([[4, 6, 24, 30], [36, 34, 60, 58], [10, 40, 30, 60], [40, 36, 56, 50], [40, -6, 62, 20]],
         [1, 3, 2, 1, 1],  # person, car, dog (unmapped: dropped), person (score below min_score), person
         [0.9, 0.7, 0.95, 0.01, 0.6]),
        ([], [], []),  # an image without boxes
    ]))
    out = teacher.predict(torch.rand(2, 3, 64, 64))["detection"]
    assert out.shape == (2, 2 + 4, 16, 16)
    (boxes, scores, labels), empty = decoded(teacher, out)
    torch.testing.assert_close(boxes, torch.tensor([[4.0, 6, 24, 30], [36, 34, 60, 58], [40, 0, 62, 20]]))
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, 0.6]))  # the peaks are the teacher's scores
    assert labels.tolist() == [1, 0, 1]  # person -> student class 1, car -> 0; the last box clipped to the image
    assert len(empty[0]) == 0 and float(out[1].abs().sum()) == 0.0


def test_class_map_maps_detector_classes_onto_the_students(tmp_path, monkeypatch):
    cmap = tmp_path / "map.yaml"
    cmap.write_text("map:\n  animal: [dog]\n  vehicle: [car]\n")  # person: unmapped
    teacher = tv_teacher(students=["vehicle", "animal"], class_map=str(cmap))
    assert teacher.label_lookup.tolist() == [-1, -1, 1, 0]
    monkeypatch.setattr(teacher.model, "forward", fake_torchvision_forward([
        ([[4, 6, 24, 30], [36, 34, 60, 58], [40, 2, 60, 22]], [2, 3, 1], [0.8, 0.5, 0.9]),
    ]))
    (boxes, scores, labels), = decoded(teacher, teacher.predict(torch.rand(1, 3, 64, 64))["detection"])
    torch.testing.assert_close(boxes, torch.tensor([[4.0, 6, 24, 30], [36, 34, 60, 58]]))
    assert labels.tolist() == [1, 0] and scores.tolist() == pytest.approx([0.8, 0.5])
    with pytest.raises(ConfigError, match="needs a detection task"):
        tv_teacher(class_map=str(cmap))


def test_student_classes_the_detector_does_not_know_ask_for_a_class_map():
    with pytest.raises(ConfigError, match="class_map") as info:
        tv_teacher(students=["persn", "bicycle"])
    message = str(info.value)
    assert "'persn'" in message and "'bicycle'" in message and "did you mean 'person'" in message
    assert "'car'" in message  # the teacher's classes are listed


def test_weights_file_and_fingerprint(tmp_path):
    torch.manual_seed(0)
    module = torchvision.models.get_model(MODEL, weights=None, weights_backbone=None, num_classes=4)
    path = tmp_path / "detector.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))

    def fingerprint(students=("person", "car"), **options):
        opts = {"weights_file": str(path), "class_names": NAMES, **options}
        teacher = build_teacher(TeacherConfig(name="tv", path=f"torchvision:{MODEL}", options=opts),
                                {"detection": list(students)})
        assert teacher.num_classes == 4  # inferred from the file
        return teacher.fingerprint()

    plain = fingerprint()
    assert fingerprint() == plain
    assert fingerprint(min_score=0.3) != plain  # same weights, other outputs: cached maps must not be reused
    assert fingerprint(stride=8) != plain
    assert fingerprint(students=("car", "person")) != plain  # other class mapping
    with pytest.raises(ConfigError, match="does not fit"):
        fingerprint(num_classes=5, class_names=NAMES + ["cat"])


def test_ssdlite_from_a_weights_file(tmp_path):
    torch.manual_seed(0)
    module = torchvision.models.get_model("ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None,
                                          num_classes=3)
    path = tmp_path / "ssd.pth"
    torch.save(module.state_dict(), path)
    cfg = TeacherConfig(name="ssd", path="torchvision:ssdlite320_mobilenet_v3_large",
                        options={"weights_file": str(path), "class_names": ["__background__", "a", "b"],
                                 "min_score": 0.0})
    teacher = build_teacher(cfg, {"detection": ["b", "a"]})
    assert teacher.num_classes == 3
    out = teacher.predict(torch.rand(1, 3, 40, 52))["detection"]
    assert out.shape == (1, 2 + 4, 10, 13) and torch.isfinite(out).all()
    for boxes, _, _ in teacher.task.decode(out, score_threshold=0.0):  # boxes in the input's pixels
        assert bool((boxes[:, 2] <= 52).all() and (boxes[:, 3] <= 40).all())
    with pytest.raises(ConfigError, match="fixed input size"):
        build_teacher(TeacherConfig(name="ssd", path="torchvision:ssdlite320_mobilenet_v3_large",
                                    options={**cfg.options, "min_size": 800}))


def test_torchvision_source_dispatches_by_builder_name():
    seg = build_teacher(TeacherConfig(name="seg", path="torchvision:lraspp_mobilenet_v3_large",
                                      options={"weights": "none", "num_classes": 3}), {"detection": ["a", "b"]})
    assert isinstance(seg, TorchvisionTeacher) and seg.tasks == ("semseg",)
    with pytest.raises(ConfigError, match="did you mean 'fasterrcnn_resnet50_fpn'"):
        build_teacher(TeacherConfig(name="x", path="torchvision:fasterrcnn_resnet50_fp"))
    with pytest.raises(ConfigError, match="detection only"):
        build_teacher(TeacherConfig(name="x", path=f"torchvision:{MODEL}", tasks=["semseg"], options=RANDOM))
    with pytest.raises(ConfigError, match="did you mean 'min_score'"):
        tv_teacher(min_scor=0.1)


def test_named_weights_that_are_not_cached_fail_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # so get_dir() follows TORCH_HOME
    start = time.monotonic()
    with pytest.raises(ConfigError, match="not cached") as info:
        build_teacher(TeacherConfig(name="tv", path=f"torchvision:{MODEL}", options={"weights": "DEFAULT"}))
    assert time.monotonic() - start < 5
    assert "weights_file" in str(info.value) and "does not download" in str(info.value)
    assert not (tmp_path / "empty_torch_home").exists()  # nothing was downloaded


# ------------------------------------------------------------------------------------------------------- hf


RESNET = dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", out_features=["stage2"])
DETR = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32,
            encoder_attention_heads=2, decoder_attention_heads=2, num_queries=6)
LABELS = ("person", "dog", "car")


def _labels(labels) -> dict:
    return dict(id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})


def tiny_detr(folder, labels=LABELS) -> None:
    cfg = transformers.DetrConfig(backbone_config=transformers.ResNetConfig(**RESNET), **DETR, **_labels(labels))
    transformers.DetrForObjectDetection(cfg).save_pretrained(folder)
    transformers.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)


def tiny_conditional_detr(folder, labels=LABELS) -> None:
    cfg = transformers.ConditionalDetrConfig(backbone_config=transformers.ResNetConfig(**RESNET), **DETR,
                                             **_labels(labels))
    transformers.ConditionalDetrForObjectDetection(cfg).save_pretrained(folder)
    transformers.ConditionalDetrImageProcessor(size={"shortest_edge": 48, "longest_edge": 64}).save_pretrained(folder)


def tiny_yolos(folder, labels=LABELS) -> None:
    cfg = transformers.YolosConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                   image_size=[64, 64], patch_size=16, num_detection_tokens=6, **_labels(labels))
    transformers.YolosForObjectDetection(cfg).save_pretrained(folder)
    transformers.YolosImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)


def hf_teacher(folder, students=None, **options) -> HuggingFaceDetectionTeacher:
    return build_teacher(TeacherConfig(name="detr", path=f"hf:{folder}", options=options), {"detection": students})


@pytest.mark.parametrize("make", [tiny_detr, tiny_conditional_detr, tiny_yolos])
def test_hf_detectors_load_through_the_hf_source(make, tmp_path):
    torch.manual_seed(0)
    make(tmp_path / "m")
    teacher = hf_teacher(tmp_path / "m", ["car", "person"], min_score=0.0)
    assert isinstance(teacher, HuggingFaceDetectionTeacher) and teacher.tasks == ("detection",)
    assert teacher.label_lookup.tolist() == [1, -1, 0]
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.model.training
    out = teacher.predict(torch.rand(2, 3, 48, 62))["detection"]
    assert out.shape == (2, 2 + 4, 12, math.ceil(62 / 4)) and torch.isfinite(out).all()


def test_detr_preprocessing_follows_the_processor(tmp_path):
    tiny_detr(tmp_path / "detr")
    teacher = hf_teacher(tmp_path / "detr")
    assert teacher.detection_classes == list(LABELS)  # no student classes given: its own
    assert teacher.model_input_size(48, 64) == (64, 85)  # short side 64, long side within 96
    assert teacher.model_input_size(32, 96) == (32, 96)  # long side capped at 96
    assert hf_teacher(tmp_path / "detr", input_size="input").model_input_size(48, 64) == (48, 64)
    assert hf_teacher(tmp_path / "detr", input_size=[40, 40]).model_input_size(48, 64) == (40, 40)
    torch.testing.assert_close(teacher.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_detr_boxes_render_into_maps_that_decode_to_them(tmp_path, monkeypatch):
    tiny_detr(tmp_path / "detr")
    teacher = hf_teacher(tmp_path / "detr", ["car", "person"], min_score=0.1)
    # 4 queries of image 0: person, car, dog (no student class), person with a low score; logits over 3 + "no object"
    logits = torch.full((2, 6, 4), -20.0)
    logits[..., 3] = 5.0  # the other queries (and every query of image 1) see nothing
    for q, (label, value) in enumerate([(0, 6.0), (2, 4.0), (1, 8.0), (0, -1.0)]):
        logits[0, q, label], logits[0, q, 3] = value, 2.0
    boxes = torch.zeros(2, 6, 4)  # (cx, cy, w, h) relative to the image
    boxes[0, :4] = torch.tensor([[0.25, 0.25, 0.3, 0.35], [0.75, 0.7, 0.3, 0.4], [0.2, 0.8, 0.2, 0.2],
                                 [0.7, 0.2, 0.2, 0.2]])
    boxes[1] = torch.tensor([0.5, 0.5, 0.2, 0.2])
    calls = []

    def forward(pixel_values=None, **kwargs):
        calls.append(tuple(pixel_values.shape))
        return transformers.models.detr.modeling_detr.DetrObjectDetectionOutput(logits=logits, pred_boxes=boxes)

    monkeypatch.setattr(teacher.model, "forward", forward)
    height, width = 48, 64
    out = teacher.predict(torch.rand(2, 3, height, width))["detection"]
    assert calls == [(2, 3, 64, 85)] and out.shape == (2, 6, 12, 16)
    probs = logits.softmax(-1)
    scale = torch.tensor([width, height, width, height])
    expected = torch.stack([boxes[0, :2, 0] - boxes[0, :2, 2] / 2, boxes[0, :2, 1] - boxes[0, :2, 3] / 2,
                            boxes[0, :2, 0] + boxes[0, :2, 2] / 2, boxes[0, :2, 1] + boxes[0, :2, 3] / 2], 1) * scale
    (got_boxes, got_scores, got_labels), (empty, _, _) = decoded(teacher, out)
    torch.testing.assert_close(got_boxes, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(got_scores, torch.stack([probs[0, 0, 0], probs[0, 1, 2]]), atol=1e-5, rtol=0)
    assert got_labels.tolist() == [1, 0]  # person -> student 1, car -> 0; dog dropped; low score dropped
    assert probs[0, 3, 0] < 0.1 and probs[0, 2, 1] > 0.9 and len(empty) == 0


def test_hf_detector_distills_and_its_fingerprint_covers_the_recipe(tmp_path):
    torch.manual_seed(0)
    tiny_conditional_detr(tmp_path / "m")
    teacher = hf_teacher(tmp_path / "m", ["person", "car"], min_score=0.0)
    assert_distills(teacher)
    plain = teacher.fingerprint()
    assert hf_teacher(tmp_path / "m", ["person", "car"], min_score=0.0).fingerprint() == plain
    assert hf_teacher(tmp_path / "m", ["person", "car"], min_score=0.2).fingerprint() != plain
    assert hf_teacher(tmp_path / "m", ["person", "car"], min_score=0.0, stride=8).fingerprint() != plain
    assert hf_teacher(tmp_path / "m", ["person", "car"], min_score=0.0, input_size="input").fingerprint() != plain
    with pytest.raises(ConfigError, match="class_map"):
        hf_teacher(tmp_path / "m", ["person", "bicycle"])


def test_uncached_hf_detector_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="not cached locally"):
        build_teacher(TeacherConfig(name="detr", path="hf:facebook/detr-resnet-50"), {"detection": ["person"]})
    assert time.perf_counter() - start < 10


def test_hf_source_still_builds_other_teachers_when_given_detection_classes(tmp_path):
    from polydistill.teachers import HuggingFaceTeacher
    from tests.test_hf_teacher import tiny_segformer

    tiny_segformer(tmp_path / "seg", labels=("floor", "wall", "box"))
    teacher = build_teacher(TeacherConfig(name="seg", path=f"hf:{tmp_path / 'seg'}"),
                            {"semseg": ["floor", "wall", "box"], "detection": ["person"]})
    assert isinstance(teacher, HuggingFaceTeacher) and teacher.tasks == ("semseg",)
