"""ONNX export: task-space outputs match eager PyTorch on real images for every head (plain and SAK layouts), at
dynamic sizes; a violated tolerance fails the command; the latency bench has the right rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from polydistill.checkpoint import save_checkpoint
from polydistill.cli import app
from polydistill.config import ModelSpec
from polydistill.deploy.export import (
    adaptive_avg_pool2d_dynamic,
    check_parity,
    export_checkpoint,
    onnx_runner,
    parity_batches,
)
from polydistill.deploy.runtime import read_sidecar
from polydistill.errors import ConfigError
from polydistill.students import build_student
from tests.conftest import write_tiny_dataset

runner = CliRunner()
CLASSES = ["floor", "wall", "box"]


def make_student(path: Path, layout: str = "plain", seed: int = 0) -> Path:
    """A randomly initialised tiny student with depth, semseg and detection heads (and a features task, which the
    deployed model drops), saved as a checkpoint. Its batch-norm statistics and detection bias are moved off
    their defaults so that every output is non-trivial (detections above the drawing threshold)."""
    spec = {"tasks": {"depth": {}, "semseg": {"num_classes": 3, "class_names": CLASSES},
                      "detection": {"num_classes": 1, "class_names": ["box"], "source_ids": [2]},
                      "feat": {"type": "features", "channels": 12}},
            "backbone": "test_efficientnet", "neck_channels": 16, "layout": layout, "input_size": [32, 48]}
    torch.manual_seed(seed)
    model, _ = build_student(spec)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    model.heads["detection"].classes.bias.data.fill_(0.5)
    return save_checkpoint(path, model=model, spec=ModelSpec.of(spec))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("export_data"), 4, seed=5)


@pytest.fixture(scope="module", params=["plain", "sak"])
def exported(request, tmp_path_factory, images):
    root = tmp_path_factory.mktemp(f"export_{request.param}")
    ckpt = make_student(root / "ckpt", request.param)
    result = export_checkpoint(ckpt, root / "student.onnx", images=[images], torchscript=True)
    return request.param, ckpt, result


def test_parity_for_every_head_and_runtime(exported):
    layout, _, result = exported
    assert result.ok and len(result.images) == 4
    for report in result.parity:
        assert set(report.max_abs_diff) == {"depth", "semseg", "detection"}
        assert all(0 <= d <= 1e-4 for d in report.max_abs_diff.values()), report.max_abs_diff
        assert all(v > 0.1 for v in report.max_abs_value.values())  # real outputs were compared, not zeros
        # the export size with all images, and a second size that is not a multiple of the strides
        assert [c["size"] for c in report.checks] == [[32, 48], [51, 77]]
        assert [c["batch"] for c in report.checks] == [4, 2]
    assert {r.runtime for r in result.parity} == {"onnxruntime", "torchscript"}
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["parity"]["onnxruntime"]["ok"] is True and sidecar["model"]["layout"] == layout


def test_graph_has_named_task_outputs_dynamic_axes_and_no_training_parts(exported):
    layout, _, result = exported
    proto = onnx.load(str(result.onnx))
    assert [o.name for o in proto.graph.output] == ["depth", "semseg", "detection"]
    (image,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "image" and dims == ["batch", 3, "height", "width"]
    names = {t.name for t in proto.graph.initializer}
    assert not any("heads.feat" in n or "necks.feat" in n for n in names)  # projector and its neck dropped
    assert any("paths.feat" in n for n in names) == (layout == "sak")  # the routers still mix the adapter path
    if layout == "sak":  # the routers' noise logits are cut: 2 experts -> 2 clean logits, not 4
        gate = [t for t in proto.graph.initializer if "routers.depth.0.gate.3.weight" in t.name]
        assert gate and gate[0].dims[0] == 2


def test_dynamic_batch_and_size_with_onnx_runtime(exported):
    _, _, result = exported
    run = onnx_runner(result.onnx)
    depth, semseg, detection = run(torch.rand(3, 3, 40, 72))
    assert depth.shape == (3, 1, 40, 72) and semseg.shape == (3, 3, 40, 72) and detection.shape == (3, 5, 10, 18)
    assert (depth > 0).all() and np.isfinite(semseg).all()
    assert ((detection[:, :1] >= 0) & (detection[:, :1] <= 1)).all()  # heat-maps are probabilities


def test_sidecar_describes_the_model_without_the_checkpoint(exported):
    _, _, result = exported
    sidecar = read_sidecar(result.onnx)
    assert sidecar["input"]["input_size"] == [32, 48] and "ImageNet" in sidecar["input"]["normalisation"]
    assert sidecar["outputs"]["semseg"]["class_names"] == CLASSES
    assert sidecar["outputs"]["detection"]["stride"] == 4 and sidecar["tasks"]["detection"]["stride"] == 4
    assert "metres" in sidecar["outputs"]["depth"]["meaning"] and "feat" not in sidecar["tasks"]
    result.sidecar.rename(result.sidecar.with_suffix(".bak"))  # the copy embedded in the ONNX file is read instead
    try:
        assert read_sidecar(result.onnx)["tasks"] == sidecar["tasks"]
    finally:
        result.sidecar.with_suffix(".bak").rename(result.sidecar)


def test_perturbed_model_fails_parity(exported, tmp_path, images):
    _, ckpt, result = exported
    proto = onnx.load(str(result.onnx))
    bias = next(t for t in proto.graph.initializer if t.name.endswith("heads.depth.3.bias"))
    value = onnx.numpy_helper.to_array(bias) + 0.01  # log-depth + 0.01: depth off by 1 %
    bias.CopyFrom(onnx.numpy_helper.from_array(value.astype(np.float32), bias.name))
    onnx.save(proto, str(tmp_path / "bad.onnx"))

    from polydistill.checkpoint import load_student_model
    from polydistill.deploy.export import TaskSpaceModel
    from polydistill.deploy.predict import load_image

    student, tasks, _ = load_student_model(ckpt)
    batches = parity_batches([load_image(p) for p in sorted((images / "images").iterdir())], (32, 48))
    report = check_parity(TaskSpaceModel(student, tasks).eval(), onnx_runner(tmp_path / "bad.onnx"), batches,
                          "onnxruntime")
    assert not report.ok and report.max_abs_diff["depth"] > 1e-3
    assert report.max_abs_diff["semseg"] <= 1e-4  # the other heads are untouched


def test_export_command_exit_codes(tmp_path, images):
    ckpt = make_student(tmp_path / "ckpt")
    ok = runner.invoke(app, ["export", str(ckpt), "--out", str(tmp_path / "s.onnx"), "--images", str(images)])
    assert ok.exit_code == 0, ok.output
    assert "parity ok" in ok.output and "detection" in ok.output
    strict = runner.invoke(app, ["export", str(ckpt), "--out", str(tmp_path / "t.onnx"), "--images", str(images),
                                 "--tolerance", "0"])
    assert strict.exit_code == 1 and "parity failed" in strict.output
    # no images and no run config naming a validation split: a clear error, not random inputs
    missing = runner.invoke(app, ["export", str(ckpt), "--out", str(tmp_path / "u.onnx")])
    assert missing.exit_code == 2 and "--images" in " ".join(missing.output.split())


def test_parity_falls_back_to_the_runs_validation_split(tmp_path, images):
    run = tmp_path / "run"
    make_student(run / "checkpoints" / "best")
    (run / "config.yaml").write_text(f"data:\n  val: {images}\n")
    result = export_checkpoint(run, tmp_path / "s.onnx")
    assert result.ok and len(result.images) == 4
    with pytest.raises(ConfigError, match="must end in .onnx"):
        export_checkpoint(run, tmp_path / "s.bin")


def test_dynamic_adaptive_pool_matches_pytorch():
    cases = (((2, 3, 5, 7), (3, 4)), ((1, 2, 8, 12), (4, 6)), ((1, 1, 9, 4), (5, 4)), ((1, 1, 3, 3), (1, 1)))
    for shape, size in cases:
        x = torch.randn(*shape)
        assert torch.allclose(adaptive_avg_pool2d_dynamic(x, size), F.adaptive_avg_pool2d(x, size), atol=1e-6)


def test_bench_latency_rows(tmp_path):
    ckpt = make_student(tmp_path / "student")
    teacher = make_student(tmp_path / "teacher", seed=1)
    result = runner.invoke(app, ["bench", "latency", str(ckpt), "--teacher", f"big={teacher}", "--sizes", "32x48",
                                 "--batch", "1,2", "--rounds", "1", "--iters", "1", "--warmup", "1",
                                 "--threads", "1", "--out", str(tmp_path / "bench")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench" / "latency.json").read_text())
    rows = {(r["model"], r["batch"]) for r in report["rows"]}
    assert rows == {(m, b) for m in ("student", "student (onnx)", "big") for b in (1, 2)}
    assert all(r["ms"] > 0 and r["size"] == [32, 48] for r in report["rows"])
    assert report["environment"]["threads"] == 1
    table = (tmp_path / "bench" / "latency.md").read_text()
    assert "| student (onnx) | ONNX Runtime" in table and "32×48 b2 (ms)" in table
    bad = runner.invoke(app, ["bench", "latency", str(ckpt), "--sizes", "32by48"])
    assert bad.exit_code == 2 and "HEIGHTxWIDTH" in bad.output
