"""Teachers: checkpoint teachers are frozen and answer in task space; distillation uses them."""

from __future__ import annotations

import json

import pytest
import torch

from polydistill.config import load_config
from polydistill.engine.logging import read_steps
from polydistill.errors import ConfigError
from polydistill.pipeline.train import train_run
from polydistill.teachers import CheckpointTeacher
from tests.conftest import tiny_config


def test_checkpoint_teacher_is_frozen_and_in_task_space(teacher_runs):
    teacher = CheckpointTeacher("seg", teacher_runs["semseg"])
    teacher.train()  # must not leave eval mode
    assert not teacher.training and not teacher.model.training
    assert all(not p.requires_grad for p in teacher.parameters())
    out = teacher.predict(torch.rand(2, 3, 32, 48))
    assert set(out) == {"semseg"} and out["semseg"].shape == (2, 3, 32, 48)
    assert not out["semseg"].requires_grad
    depth = CheckpointTeacher("d", teacher_runs["depth"]).predict(torch.rand(1, 3, 32, 48))["depth"]
    assert depth.shape == (1, 1, 32, 48) and bool((depth > 0).all())  # metres, not log-metres


def test_teacher_cannot_teach_a_task_it_does_not_predict(teacher_runs):
    with pytest.raises(ConfigError, match="cannot teach"):
        CheckpointTeacher("seg", teacher_runs["semseg"], tasks=["depth"])


@pytest.mark.parametrize("precompute", [True, False])
def test_distillation_uses_both_teachers(tiny_data, teacher_runs, tmp_path, precompute):
    cfg = tiny_config(tiny_data["train"], tiny_data["val"], max_steps=4)
    cfg["teachers"] = [{"name": f"{t}_teacher", "path": str(teacher_runs[t])} for t in ("depth", "semseg")]
    cfg["distill"] = {"precompute_teachers": precompute, "teacher_weights": {"semseg_teacher": 2.0}}
    train_run(load_config(base=cfg), tmp_path / "run")
    row = read_steps(tmp_path / "run" / "steps.csv")[0]
    assert row["weight/semseg/semseg_teacher"] == 2.0 and row["weight/depth/depth_teacher"] == 1.0
    assert row["loss/semseg/semseg_teacher"] > 0 and row["loss/depth/depth_teacher"] > 0


def test_precomputed_and_online_teacher_targets_agree(tiny_data, teacher_runs, tmp_path):
    """Without augmentation, stored (fp16) teacher maps give the same loss as running the teacher."""
    losses = {}
    for precompute in (True, False):
        cfg = tiny_config(tiny_data["train"], None, max_steps=2)
        cfg["data"]["augment"] = {"hflip": 0.0, "scale": [1.0, 1.0]}
        cfg["teachers"] = [{"name": "d", "path": str(teacher_runs["depth"])}]
        cfg["distill"] = {"precompute_teachers": precompute}
        train_run(load_config(base=cfg), tmp_path / str(precompute))
        losses[precompute] = read_steps(tmp_path / str(precompute) / "steps.csv")[0]["loss/depth/d"]
    assert losses[True] == pytest.approx(losses[False], rel=2e-3)


def test_teacher_for_unknown_student_task_is_rejected(tiny_data, teacher_runs, tmp_path):
    cfg = tiny_config(tiny_data["train"], None)
    cfg["tasks"] = {"depth": {}}
    cfg["teachers"] = [{"name": "s", "path": str(teacher_runs["semseg"])}]
    with pytest.raises(ConfigError, match="does not learn"):
        train_run(load_config(base=cfg), tmp_path / "run")


# ------------------------------------------------------------------------- sources: one form, one parser

from polydistill.config import TeacherConfig  # noqa: E402
from polydistill.teachers import (  # noqa: E402
    TEACHER_SOURCES,
    Teacher,
    build_teacher,
    describe_sources,
    parse_source,
    resolve_teachers,
)
from polydistill.teachers.checkpoint import Options as CheckpointOptions  # noqa: E402

FACTORY_MODULE = '''
import torch
from torch import nn


class GreyDepth(nn.Module):
    """Depth from brightness: a tiny module with weights, mapping (B, 3, H, W) in [0, 1] to metres."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(scale / 3)
            self.conv.bias.fill_(1.0)

    def forward(self, images):
        return self.conv(images)


def make(scale=1.0):
    return GreyDepth(scale)


def make_dict(scale=1.0):
    module = GreyDepth(scale)

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, images):
            return {"depth": self.inner(images)}

    return Both()
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """An importable module ``pd_test_factories`` on sys.path (as a user's installed package would be)."""
    folder = tmp_path / "importable"
    folder.mkdir()
    (folder / "pd_test_factories.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    yield "pd_test_factories"
    import sys

    sys.modules.pop("pd_test_factories", None)


def test_every_source_prefix_is_parsed_from_the_registry_including_plugins():
    for name in ("hf", "timm", "onnx", "torchvision", "checkpoint", "python"):
        assert parse_source(f"{name}:some/thing") == (name, "some/thing")
    assert parse_source("python:pkg.mod:make") == ("python", "pkg.mod:make")
    assert parse_source("runs/teacher") == ("checkpoint", "runs/teacher")
    assert parse_source("https://example.com/x") == ("checkpoint", "https://example.com/x")
    assert parse_source("notasource:x") == ("checkpoint", "notasource:x")
    assert parse_source("org/model", "hf") == ("hf", "org/model")  # an explicit source wins
    assert parse_source("hf:org/model", "hf") == ("hf", "org/model")

    def plugin(cfg, classes):
        """A plugin source."""
        raise AssertionError("not built here")

    if "plugintest" not in TEACHER_SOURCES:
        TEACHER_SOURCES.register("plugintest")(plugin)
    assert parse_source("plugintest:abc") == ("plugintest", "abc")
    rows = {name: (prefix, text) for name, prefix, text in describe_sources()}
    assert rows["plugintest"] == ("plugintest:", "A plugin source.")
    assert set(rows) >= {"hf", "timm", "onnx", "torchvision", "checkpoint", "python"}
    assert all(text for text in rows.values())


def test_typed_source_options_name_the_teacher_the_option_and_a_suggestion(teacher_runs):
    with pytest.raises(ConfigError, match=r"teacher 't' \(checkpoint options\): unknown option 'grid_strid' — "
                                          r"did you mean 'grid_stride'\?"):
        build_teacher(TeacherConfig(name="t", path=str(teacher_runs["depth"]), options={"grid_strid": 8}))
    with pytest.raises(ConfigError, match=r"teacher 't' \(checkpoint options\): option 'grid_stride': .*integer"):
        CheckpointTeacher("t", teacher_runs["depth"], options={"grid_stride": "8"})
    with pytest.raises(ConfigError, match=r"option 'grid_stride': .*greater than 0"):
        CheckpointOptions(**{}) and build_teacher(TeacherConfig(name="t", path=str(teacher_runs["depth"]),
                                                                 options={"grid_stride": 0}))


def test_python_source_imports_a_factory_by_its_dotted_name(factory_module):
    cfg = TeacherConfig(name="mine", source="python", path=f"{factory_module}:make", tasks=["depth"],
                        options={"scale": 2.0})
    teacher = build_teacher(cfg)
    assert isinstance(teacher, Teacher) and teacher.tasks == ("depth",) and teacher.name == "mine"
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    out = teacher.predict(torch.full((2, 3, 8, 12), 0.5))["depth"]
    assert out.shape == (2, 1, 8, 12) and torch.allclose(out, torch.full_like(out, 2.0))  # 2 * 0.5 + 1
    dict_teacher = build_teacher(TeacherConfig(name="d", path=f"python:{factory_module}:make_dict", tasks=["depth"]))
    assert dict_teacher.predict(torch.zeros(1, 3, 4, 4))["depth"].shape == (1, 1, 4, 4)
    with pytest.raises(ConfigError, match="package.module:factory"):
        build_teacher(TeacherConfig(name="x", source="python", path="/tmp/file.py:make", tasks=["depth"]))
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_pd'"):
        build_teacher(TeacherConfig(name="x", source="python", path="no_such_module_pd:make", tasks=["depth"]))
    with pytest.raises(ConfigError, match="say which student tasks"):
        build_teacher(TeacherConfig(name="x", source="python", path=f"{factory_module}:make"))
    with pytest.raises(ConfigError, match="make.*failed.*unexpected keyword"):
        build_teacher(TeacherConfig(name="x", source="python", path=f"{factory_module}:make", tasks=["depth"],
                                    options={"scael": 1.0}))


def test_python_teacher_fingerprint_covers_its_options_and_recipe(factory_module):
    def fingerprint(**options):
        cfg = TeacherConfig(name="mine", source="python", path=f"{factory_module}:make", tasks=["depth"],
                            options=options)
        return build_teacher(cfg).fingerprint()

    assert fingerprint(scale=2.0) == fingerprint(scale=2.0)
    assert fingerprint(scale=2.0) != fingerprint(scale=3.0)  # other weights
    # options that leave the weights alone still change the fingerprint (the cache rebuilds)
    import pd_test_factories

    pd_test_factories.make_same = lambda scale=1.0, note="a": pd_test_factories.GreyDepth(1.0)
    same = [build_teacher(TeacherConfig(name="m", source="python", path=f"{factory_module}:make_same",
                                        tasks=["depth"], options={"note": n})) for n in ("a", "b")]
    assert same[0].weights_fingerprint() == same[1].weights_fingerprint()
    assert same[0].fingerprint() != same[1].fingerprint()
    module = pd_test_factories.GreyDepth()
    plain = Teacher.from_module(module, name="m", tasks=["depth"]).fingerprint()
    assert Teacher.from_module(module, name="m", tasks=["depth"], recipe={"resize": "bicubic"}).fingerprint() != plain


class _OwnTeacher(Teacher):
    def __init__(self, name="own"):
        super().__init__(name, ("depth",))
        self.scale = torch.nn.Parameter(torch.ones(()))

    def _predict(self, images):
        return {"depth": 1.0 + images.mean(1, keepdim=True) * self.scale}


def test_resolve_teachers_merges_config_and_given_teachers_and_rejects_duplicates(teacher_runs):
    configs = [TeacherConfig(name="d", path=str(teacher_runs["depth"]))]
    own = _OwnTeacher()
    teachers = resolve_teachers(configs, [own], {"semseg": ["a"]})
    assert [t.name for t in teachers] == ["d", "own"] and not own.scale.requires_grad
    with pytest.raises(ConfigError, match=r"\['d'\] are used twice"):
        resolve_teachers(configs, [_OwnTeacher("d")])
    with pytest.raises(ConfigError, match="Teacher.from_module"):
        resolve_teachers([], [torch.nn.Conv2d(3, 1, 1)])


def test_from_module_teacher_distills_end_to_end_with_a_cache(tiny_data, factory_module, tmp_path):
    cfg = tiny_config(tiny_data["train"], None, max_steps=2)
    cfg["tasks"] = {"depth": {}}
    cfg["teachers"] = [{"name": "grey", "source": "python", "path": f"{factory_module}:make", "tasks": ["depth"],
                        "options": {"scale": 2.0}}]
    cfg["distill"] = {"precompute_teachers": True, "teacher_cache": str(tmp_path / "cache")}
    train_run(load_config(base=cfg), tmp_path / "run")
    row = read_steps(tmp_path / "run" / "steps.csv")[0]
    assert row["loss/depth/grey"] > 0
    (slot,) = (tmp_path / "cache").iterdir()

    def cached_fingerprint() -> str:
        return json.loads((slot / "manifest.json").read_text())["fingerprint"]["teachers"]["grey"]["fingerprint"]

    first = cached_fingerprint()
    cfg["teachers"][0]["options"] = {"scale": 3.0}  # other options: the cache is rebuilt, never stale outputs
    train_run(load_config(base=cfg), tmp_path / "run2")
    assert cached_fingerprint() != first
