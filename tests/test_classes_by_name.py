"""Classes are matched by name where two label spaces meet (checkpoint teachers, ``eval --data``); checkpoints
whose weights disagree with their spec, and hf folders with custom code, are clear errors (issue 18)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from polydistill.checkpoint import CheckpointError, load_weights, save_checkpoint
from polydistill.cli import app
from polydistill.config import ModelSpec, TeacherConfig
from polydistill.errors import ConfigError, DataError
from polydistill.pipeline.evaluate import evaluate_checkpoint
from polydistill.students import build_student
from polydistill.teachers import CheckpointTeacher, build_teacher
from polydistill.teachers.class_map import ClassMap
from polydistill.teachers.hf_loading import load_pretrained
from tests.conftest import write_tiny_dataset

CLASSES = ["floor", "wall", "box"]
runner = CliRunner()


def write_checkpoint(folder: Path, tasks: dict[str, dict], *, neck: int = 16, seed: int = 0) -> Path:
    """A checkpoint of a freshly initialised tiny student (no training needed to test class matching)."""
    torch.manual_seed(seed)
    spec = ModelSpec(backbone="test_efficientnet", neck_channels=neck, tasks=tasks, input_size=(32, 48))
    model, _ = build_student(spec)
    return save_checkpoint(folder, model=model, spec=spec)


def semseg_checkpoint(folder: Path, names: list[str], **kwargs) -> Path:
    return write_checkpoint(folder, {"semseg": {"num_classes": len(names), "class_names": names}}, **kwargs)


def run_cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result, " ".join(result.output.split())


def test_reordered_checkpoint_teacher_answers_in_the_students_order(tmp_path):
    path = semseg_checkpoint(tmp_path / "t", CLASSES)
    images = torch.rand(2, 3, 32, 48)
    same = build_teacher(TeacherConfig(name="t", path=str(path)), {"semseg": CLASSES})
    swapped = build_teacher(TeacherConfig(name="t", path=str(path)), {"semseg": ["wall", "floor", "box"]})
    native = same.predict(images)["semseg"]
    # the matching-order teacher's outputs, channel for channel, bit for bit: it teaches what the other would
    assert torch.equal(swapped.predict(images)["semseg"], native[:, [1, 0, 2]])
    assert same.fingerprint() != swapped.fingerprint()  # cached outputs of one order are never reused for the other
    assert "class_orders" not in same.recipe()  # a matching order keeps its fingerprint (and its cache)


def test_checkpoint_teacher_with_other_class_names_lists_both(tmp_path):
    path = semseg_checkpoint(tmp_path / "t", CLASSES)
    with pytest.raises(ConfigError) as err:
        build_teacher(TeacherConfig(name="seg_t", path=str(path)), {"semseg": ["road", "car", "sky"]})
    text = str(err.value)
    assert "teacher 'seg_t'" in text and "'floor', 'wall', 'box'" in text and "'road', 'car', 'sky'" in text


def test_checkpoint_teacher_class_count_mismatch(tmp_path):
    # placeholder names cannot be matched: another count is an error that says so (not a shape traceback)
    path = write_checkpoint(tmp_path / "t", {"semseg": {"num_classes": 3}})
    with pytest.raises(ConfigError, match=r"teacher 't' predicts 3 'semseg' classes but the student has 4"):
        CheckpointTeacher("t", path).bind_classes({"semseg": [f"class_{i}" for i in range(4)]})
    # named classes, the teacher's a subset of the student's: handled as a class map (unmapped mass channel)
    named = semseg_checkpoint(tmp_path / "named", CLASSES)
    teacher = CheckpointTeacher("t", named).bind_classes({"semseg": ["wall", "sky", "floor", "box"]})
    assert isinstance(teacher.class_map, ClassMap)
    out = teacher.predict(torch.rand(1, 3, 32, 48))["semseg"]
    assert out.shape == (1, 5, 32, 48)  # 4 student classes + the unmapped mass
    assert torch.all(out[:, 1] <= np.log(2e-6))  # 'sky' gets nothing from a teacher that does not know it
    # a superset teacher: its extra class is unmapped mass
    bigger = CheckpointTeacher("t", named).bind_classes({"semseg": ["box", "floor"]})
    assert bigger.class_map.unmapped == ["wall"]


def test_reordered_checkpoint_detection_teacher(tmp_path):
    tasks = {"detection": {"num_classes": 3, "class_names": CLASSES}}
    path = write_checkpoint(tmp_path / "t", tasks)
    images = torch.rand(1, 3, 32, 48)
    native = CheckpointTeacher("t", path).bind_classes({"detection": CLASSES}).predict(images)["detection"]
    picked = CheckpointTeacher("t", path).bind_classes({"detection": ["box", "floor"]}).predict(images)["detection"]
    assert torch.equal(picked, torch.cat([native[:, [2, 0]], native[:, 3:]], dim=1))
    with pytest.raises(ConfigError, match=r"no 'detection' class named \['car'\]"):
        CheckpointTeacher("t", path).bind_classes({"detection": ["floor", "car"]})


def relabel(src: Path, dst: Path, names: list[str]) -> Path:
    """A copy of a tiny dataset whose classes.yaml lists ``names`` (semseg ids re-numbered to match)."""
    shutil.copytree(src, dst)
    (dst / "classes.yaml").write_text(f"names: [{', '.join(names)}]\nignore_index: 255\n")
    lut = np.arange(256, dtype=np.uint8)
    for old, name in enumerate(CLASSES):
        if name in names:
            lut[old] = names.index(name)
    for png in (dst / "semseg").glob("*.png"):
        Image.fromarray(lut[np.asarray(Image.open(png))]).save(png)
    return dst


def test_eval_matches_the_folders_classes_by_name(tmp_path):
    student = write_checkpoint(tmp_path / "s", {"depth": {}, "semseg": {"num_classes": 3, "class_names": CLASSES}})
    data = write_tiny_dataset(tmp_path / "data", 6, seed=3)
    reference = evaluate_checkpoint(student, data)["metrics"]["semseg"]
    reordered = evaluate_checkpoint(student, relabel(data, tmp_path / "swapped", ["wall", "box", "floor"]))
    for key, value in reference.items():  # the same scores, per class under the same names
        assert reordered["metrics"]["semseg"][key] == pytest.approx(value, nan_ok=True), key
    with pytest.raises(DataError) as err:
        evaluate_checkpoint(student, relabel(data, tmp_path / "other", ["road", "car", "sky"]))
    assert "['road', 'car', 'sky']" in str(err.value) and "['floor', 'wall', 'box']" in str(err.value)


def test_eval_on_an_unlabelled_folder_is_an_error(tmp_path):
    student = write_checkpoint(tmp_path / "s", {"depth": {}, "semseg": {"num_classes": 3, "class_names": CLASSES}})
    data = write_tiny_dataset(tmp_path / "pool", 4, seed=4, labels=())
    result, text = run_cli("eval", student, "--data", data)
    assert result.exit_code == 2, result.output
    assert "none of its 4 images carries a label" in text and "Traceback" not in result.output


def test_eval_output_json_is_valid_without_labels_of_a_task(tmp_path):
    student = write_checkpoint(tmp_path / "s", {"depth": {}, "semseg": {"num_classes": 3, "class_names": CLASSES}})
    data = write_tiny_dataset(tmp_path / "depth_only", 4, seed=5, labels=("depth",))
    result, _ = run_cli("eval", student, "--data", data, "--output", tmp_path / "eval.json")
    assert result.exit_code == 0, result.output

    def refuse(constant: str):
        raise ValueError(f"bare {constant} in the JSON")

    report = json.loads((tmp_path / "eval.json").read_text(), parse_constant=refuse)
    assert report["metrics"]["semseg"]["miou"] is None and isinstance(report["metrics"]["depth"]["abs_rel"], float)


def test_weights_of_other_shapes_are_a_checkpoint_error(tmp_path):
    path = semseg_checkpoint(tmp_path / "t", CLASSES, neck=16)
    other = semseg_checkpoint(tmp_path / "neck8", CLASSES, neck=8)
    shutil.copy(other / "model.safetensors", path / "model.safetensors")
    model, _ = build_student(ModelSpec.model_validate_json((path / "model.json").read_text()))
    with pytest.raises(CheckpointError, match="tensor\\(s\\) of other shapes"):
        load_weights(model, path)
    with pytest.raises(ConfigError, match="teacher 't': checkpoint .* does not match its model spec"):
        CheckpointTeacher("t", path)
    data = write_tiny_dataset(tmp_path / "data", 2, seed=6)
    result, text = run_cli("eval", path, "--data", data)
    assert result.exit_code == 2 and "other shapes" in text and "Traceback" not in result.output


def test_local_hf_folder_with_custom_code_needs_trust_remote_code(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "my_custom_depth", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}))
    (folder / "configuration_custom.py").write_text("raise SystemExit('custom code ran')\n")
    with pytest.raises(ConfigError, match="set trust_remote_code: true"):
        load_pretrained(transformers.AutoConfig, str(folder), "da", trust_remote_code=False)
