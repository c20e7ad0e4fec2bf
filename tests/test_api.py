"""The public Python API at the package root: what a script does instead of the CLI."""

from __future__ import annotations

import json
import pydoc
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import polydistill
from polydistill.errors import ConfigError, DataError
from tests.conftest import tiny_config


class MeanDepth(nn.Module):
    """A 'depth model' a user has in Python: brighter pixels are nearer (a fixed, monotone rule)."""

    def __init__(self, scale: float = 4.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale), requires_grad=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 1.0 + self.scale * (1.0 - images.mean(1, keepdim=True))


def test_help_shows_the_api():
    text = pydoc.render_doc(polydistill, renderer=pydoc.plaintext)
    for name in ("load_config", "train", "cache_teachers", "evaluate", "load_student", "export", "Teacher",
                 "list_components"):
        assert name in text, name
    assert set(polydistill.__all__) >= {"load_config", "train", "cache_teachers", "evaluate", "load_student",
                                        "export", "Teacher"}


def test_import_polydistill_stays_light():
    """The CLI imports the package for every command, --help too: the API loads on first use."""
    code = "import sys, polydistill; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_load_config_from_a_dict_with_overrides(tiny_data):
    cfg = polydistill.load_config(tiny_config(tiny_data["train"], tiny_data["val"]), overrides=["train.lr=0.5"])
    assert cfg.train.lr == 0.5
    with pytest.raises(ConfigError, match="max_step.*did you mean 'max_steps'"):
        polydistill.load_config(tiny_config(tiny_data["train"], None), overrides=["train.max_step=3"])


def test_list_components_names_what_is_registered():
    found = polydistill.list_components()
    assert {"depth", "semseg", "detection", "features"} <= set(found["tasks"])
    assert {"checkpoint", "hf", "timm", "onnx", "torchvision", "python"} <= set(found["teachers"])
    assert "feedback" in found["teacher_weightings"] and "gradnorm" in found["task_weightings"]
    assert set(polydistill.list_components("weightings")) == {"teacher_weightings", "task_weightings"}
    with pytest.raises(ConfigError, match="did you mean 'tasks'"):
        polydistill.list_components("taks")


@pytest.fixture(scope="module")
def python_teacher_run(tiny_data, tmp_path_factory):
    """A student distilled from a plain nn.Module wrapped with Teacher.from_module, through the public API."""
    out = tmp_path_factory.mktemp("api_run")
    cfg = tiny_config(tiny_data["train"], tiny_data["val"], max_steps=4, val_every=4)
    cfg["distill"] = {"teacher_cache": str(out / "cache")}
    teacher = polydistill.Teacher.from_module(MeanDepth(), name="mine", tasks=["depth"])
    run = polydistill.train(cfg, out / "run", teachers=[teacher])
    return run, teacher


def test_train_with_a_python_teacher_distills_from_it(python_teacher_run):
    run, _ = python_teacher_run
    assert run.fit.steps == 4 and (run.run_dir / "checkpoints" / "last" / "model.safetensors").is_file()
    header = (run.run_dir / "steps.csv").read_text().splitlines()[0]
    assert "loss/depth/mine" in header  # the teacher's term is in the objective
    assert not (run.run_dir / "report.html").exists()  # train.report is off in this config


def test_load_student_predicts_every_input_kind_in_the_image_size(python_teacher_run, tiny_data):
    run, _ = python_teacher_run
    student = polydistill.load_student(run.run_dir)
    assert set(student.tasks) == {"depth", "semseg"} and student.input_size == (32, 48)
    path = sorted((tiny_data["val"] / "images").iterdir())[0]
    pil = Image.open(path).convert("RGB").resize((60, 40))  # another size than training: results follow it
    array = np.array(pil)
    by_kind = [student.predict(x) for x in (pil, array, torch.from_numpy(array).permute(2, 0, 1),
                                            torch.from_numpy(array).permute(2, 0, 1).float() / 255)]
    for result in by_kind:
        assert result["depth"].shape == (40, 60) and result["depth"].dtype == np.float32
        assert (result["depth"] > 0).all()  # metres
        assert result["semseg"].shape == (40, 60) and result["semseg"].dtype == np.int64
        np.testing.assert_allclose(result["depth"], by_kind[0]["depth"], rtol=1e-5)
    from_file = student.predict([path, path])
    assert len(from_file) == 2 and from_file[0]["depth"].shape == Image.open(path).size[::-1]
    with pytest.raises(DataError, match=r"\(H, W, 3\)"):
        student.predict(np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        student.predict(torch.full((3, 8, 8), 7.0))


def test_evaluate_and_export_through_the_api(python_teacher_run, tiny_data, tmp_path, monkeypatch):
    run, teacher = python_teacher_run
    result = polydistill.evaluate(run.run_dir, tiny_data["val"])
    assert set(result["metrics"]) == {"depth", "semseg"} and result["images"] == 8
    # the same Python teacher compares in eval, as an instance and by its dotted name (python: source)
    (tmp_path / "my_teachers.py").write_text(
        "import polydistill\nfrom tests.test_api import MeanDepth\n\n"
        "def make(scale=4.0):\n"
        "    return polydistill.Teacher.from_module(MeanDepth(scale), name='x', tasks=['depth'])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    compared = polydistill.evaluate(run.run_dir, tiny_data["val"], teachers=[teacher, "python:my_teachers:make"])
    assert set(compared["teachers"]) == {"mine", "my_teachers:make"}
    assert compared["teachers"]["mine"]["depth"] == compared["teachers"]["my_teachers:make"]["depth"]
    assert set(compared["retention"]) == {"depth"}
    exported = polydistill.export(run.run_dir, tmp_path / "student.onnx")
    assert exported.ok and json.loads(exported.sidecar.read_text())["outputs"].keys() == {"depth", "semseg"}


def test_cache_teachers_with_a_python_teacher(python_teacher_run, tiny_data, tmp_path):
    _, teacher = python_teacher_run
    cfg = tiny_config(tiny_data["train"], tiny_data["val"])
    caches = polydistill.cache_teachers(cfg, tmp_path / "cache", teachers=[teacher])
    assert len(caches["train"]) == 24 and ("mine", "depth") in caches["train"].outputs


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path):
    """The README's Python API example (a custom nn.Module teacher), extracted and run unchanged."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "example.py").write_text(code)
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "(120, 160) (120, 160)" in done.stdout
    assert (tmp_path / "runs/api_example/student.onnx").is_file()
    assert (tmp_path / "runs/api_example/run/report.html").is_file()
