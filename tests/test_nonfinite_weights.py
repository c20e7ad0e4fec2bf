"""Diverged weights (NaN/Inf) are never saved as ``last``/``best`` and never loaded for inference; a failed
export leaves no model behind."""

from __future__ import annotations

import json
import re

import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from polydistill.checkpoint import save_checkpoint
from polydistill.cli.main import app
from polydistill.config import ModelSpec, load_config
from polydistill.errors import TrainingError
from polydistill.pipeline.train import train_run
from polydistill.students import build_student
from tests.conftest import tiny_config, write_tiny_dataset

runner = CliRunner()


def one_line(output: str) -> str:
    return " ".join(output.split())


def tiny_checkpoint(path):
    spec = {"tasks": {"depth": {}, "semseg": {"num_classes": 3, "class_names": ["floor", "wall", "box"]}},
            "backbone": "test_efficientnet", "neck_channels": 16, "input_size": [32, 48]}
    torch.manual_seed(0)
    model, _ = build_student(spec)
    return save_checkpoint(path, model=model, spec=ModelSpec.of(spec))


def test_divergence_stops_before_writing_nonfinite_weights_and_names_the_last_finite_step(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 8, seed=31)
    val = write_tiny_dataset(tmp_path / "v", 4, seed=32)
    cfg = load_config(base=tiny_config(data, val, max_steps=12, lr=1e6, save_every=1, val_every=2))
    run = tmp_path / "run"
    try:
        train_run(cfg, run)
        raise AssertionError("lr=1e6 trained to the end")
    except TrainingError as exc:
        message = str(exc)
    assert "NaN/Inf" in message and "lower train.lr" in message.lower()
    last = run / "checkpoints" / "last"
    step = json.loads((last / "state.json").read_text())["step"]
    assert f"{last} holds step {step}" in message  # the step it names is the one on disk
    assert int(re.search(r"by step (\d+)", message).group(1)) > step
    for name in ("last", "best"):  # neither checkpoint holds NaN/Inf
        folder = run / "checkpoints" / name
        if folder.exists():
            weights = load_file(str(folder / "model.safetensors"))
            assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()), name
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_predict_export_and_eval_refuse_nonfinite_weights(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    weights = load_file(str(ckpt / "model.safetensors"))
    bad = sorted(k for k in weights if k.endswith("running_var"))[0]
    weights[bad] = torch.full_like(weights[bad], float("inf"))
    save_file(weights, str(ckpt / "model.safetensors"))
    data = write_tiny_dataset(tmp_path / "d", 2, seed=33)
    out = tmp_path / "m.onnx"
    for args in (["predict", str(ckpt), str(data / "images"), "--out", str(tmp_path / "pred"), "--no-progress"],
                 ["export", str(ckpt), "--out", str(out), "--images", str(data)],
                 ["eval", str(ckpt), "--data", str(data)]):
        result = runner.invoke(app, args)
        text = one_line(result.output)
        assert result.exit_code == 2, (args[0], text)
        assert f"{ckpt / 'model.safetensors'} holds NaN/Inf weights" in text and bad in text, (args[0], text)
        assert "Traceback" not in result.output
    assert not (tmp_path / "pred").exists() or not any((tmp_path / "pred").rglob("*.npy"))
    assert not list(tmp_path.glob("*.onnx*"))


def test_export_that_fails_parity_leaves_no_model_and_keeps_an_earlier_one(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    data = write_tiny_dataset(tmp_path / "d", 2, seed=34)
    out = tmp_path / "s.onnx"
    failed = runner.invoke(app, ["export", str(ckpt), "--out", str(out), "--images", str(data), "--tolerance", "0"])
    assert failed.exit_code == 1 and "parity failed" in failed.output, failed.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "d"]  # no .onnx, no sidecar, no staged file
    ok = runner.invoke(app, ["export", str(ckpt), "--out", str(out), "--images", str(data), "--torchscript"])
    assert ok.exit_code == 0, ok.output
    before = {p.name: p.read_bytes() for p in tmp_path.glob("s.*")}
    assert set(before) == {"s.onnx", "s.onnx.json", "s.torchscript.pt"}
    failed = runner.invoke(app, ["export", str(ckpt), "--out", str(out), "--images", str(data), "--tolerance", "0",
                                 "--torchscript"])
    assert failed.exit_code == 1 and "parity failed" in failed.output
    assert {p.name: p.read_bytes() for p in tmp_path.glob("s.*")} == before  # the good export is untouched
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
