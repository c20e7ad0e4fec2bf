"""Engine: a tiny run trains and writes its artefacts; resume continues with identical state."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from polydistill.checkpoint import find_checkpoint, load_spec, save_checkpoint
from polydistill.config import load_config
from polydistill.engine.logging import read_steps
from polydistill.errors import PolydistillError, TrainingError
from polydistill.pipeline.train import train_run
from tests.conftest import tiny_config


def test_run_writes_config_logs_and_checkpoints(tiny_data, tmp_path):
    cfg = load_config(base=tiny_config(tiny_data["train"], tiny_data["val"]))
    result = train_run(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "config.yaml").read_text().startswith("data:")
    rows = read_steps(run / "steps.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert {"loss/depth/gt", "weight/depth/gt", "loss/semseg/gt", "lr"} <= set(rows[0])
    vals = [json.loads(ln) for ln in (run / "val.jsonl").read_text().splitlines()]
    assert [v["step"] for v in vals] == [3, 6]
    assert set(vals[0]["metrics"]) == {"depth", "semseg"}
    best = find_checkpoint(run)
    assert best.name == "best" and load_spec(best).tasks["semseg"]["num_classes"] == 3
    assert result.fit.steps == 6


def test_resume_continues_with_identical_state(tiny_data, tmp_path):
    cfg = load_config(base=tiny_config(tiny_data["train"], tiny_data["val"]))
    train_run(cfg, tmp_path / "straight")
    train_run(cfg, tmp_path / "resumed", stop_at_step=4)  # stopped at step 4, like an interruption...
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] == 4
    resumed = train_run(cfg, tmp_path / "resumed", resume=True)  # ...then resumed to the end
    assert resumed.fit.steps == 6
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    sa = read_steps(tmp_path / "straight" / "steps.csv")
    sb = read_steps(tmp_path / "resumed" / "steps.csv")
    assert [r["loss"] for r in sa] == [r["loss"] for r in sb]


def test_resume_refuses_a_changed_schedule(tiny_data, tmp_path):
    cfg = load_config(base=tiny_config(tiny_data["train"], tiny_data["val"]))
    train_run(cfg, tmp_path / "run", stop_at_step=3)
    longer = load_config(base=tiny_config(tiny_data["train"], tiny_data["val"], max_steps=9))
    with pytest.raises(TrainingError, match="cannot resume"):
        train_run(longer, tmp_path / "run", resume=True)


def test_diverging_training_skips_nan_steps_then_stops_with_a_clear_error(tiny_data, tmp_path):
    cfg = load_config(base=tiny_config(tiny_data["train"], None, lr=1e30, grad_clip=None, max_steps=20,
                                       nan_patience=3, save_every=1))
    with pytest.raises(TrainingError, match=r"3 steps in a row had a non-finite loss .* holds the weights from before"):
        train_run(cfg, tmp_path / "run")
    rows = read_steps(tmp_path / "run" / "steps.csv")
    assert all(math.isnan(r["loss"]) for r in rows[-3:]) and math.isfinite(rows[-4]["loss"])  # every skip is logged
    # the skipped steps made no update: no NaN reached the weights kept in the checkpoint
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "state.json").read_text())
    assert state["nan_steps"] == state["nan_streak"] == 3 - (int(rows[-1]["step"]) - state["step"])
    weights = load_file(str(tmp_path / "run" / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_checkpoint_write_is_atomic(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "last", model=model, spec={"tasks": {}}, state={"step": 1})

    class Boom(torch.nn.Linear):
        def state_dict(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path / "last", model=Boom(2, 2), spec={"tasks": {}}, state={"step": 2})
    assert json.loads((tmp_path / "last" / "state.json").read_text())["step"] == 1  # old one intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # no debris


def test_find_checkpoint_explains_what_is_missing(tmp_path):
    with pytest.raises(PolydistillError, match="no polydistill checkpoint"):
        find_checkpoint(tmp_path)


def test_bf16_autocast_runs_on_cpu(tiny_data, tmp_path):
    cfg = load_config(base=tiny_config(tiny_data["train"], None, max_steps=2, mixed_precision="bf16"))
    assert train_run(cfg, tmp_path / "run").fit.steps == 2


def test_channels_last_changes_the_memory_layout_not_the_training(tiny_data, tmp_path, monkeypatch):
    """NHWC is a speed setting: the same run in either layout logs the same losses (up to float reordering in
    the convolution kernels), and its checkpoint holds the trained values (stored as ordinary contiguous tensors)."""
    from polydistill.pipeline import train as run_module

    layouts = []
    build = run_module.build_student

    def recording_build(spec):
        model, tasks = build(spec)
        layouts.append(model)
        return model, tasks

    monkeypatch.setattr(run_module, "build_student", recording_build)
    losses = {}
    for channels_last in (False, True):
        cfg = load_config(base=tiny_config(tiny_data["train"], None, max_steps=3, channels_last=channels_last))
        train_run(cfg, tmp_path / str(channels_last))
        losses[channels_last] = [float(r["loss"]) for r in read_steps(tmp_path / str(channels_last) / "steps.csv")]
    convs = [[p for p in model.parameters() if p.dim() == 4] for model in layouts]
    assert not any(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs[0])
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs[1])
    assert len(losses[True]) == 3
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-3, atol=1e-4)
    weights = load_file(str(tmp_path / "True" / "checkpoints" / "last" / "model.safetensors"))
    trained = layouts[1].state_dict()  # saved NHWC weights hold the same values, element for element
    assert weights.keys() == trained.keys() and all(torch.equal(weights[k], trained[k]) for k in weights)


def test_fp16_without_gpu_is_a_config_error(tiny_data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = load_config(base=tiny_config(tiny_data["train"], None, mixed_precision="fp16"))
    with pytest.raises(PolydistillError, match="fp16 .*GPU"):
        train_run(cfg, tmp_path / "run")


def test_model_selection_waits_for_a_usable_baseline_of_every_primary_metric():
    """A detector's mAP of 0.0007 is no baseline: relative to it, noise reads as +100 % and would pick a step
    whose depth is still diverging. Selection starts once mAP reaches 0.01."""
    import math
    from types import SimpleNamespace

    from polydistill.engine.trainer import Trainer
    from polydistill.tasks import build_task

    state = SimpleNamespace(tasks={"depth": build_task("depth"), "detection": build_task("detection", num_classes=2)},
                            selection_baseline=None)

    def score(abs_rel, map50):
        return Trainer._selection_score(state, {"depth": {"abs_rel": abs_rel}, "detection": {"map50": map50}})

    assert math.isnan(score(44.7, 0.0007))
    assert math.isnan(score(1.69, 0.0008))  # would read +48 % against the first values
    assert score(0.40, 0.02) == 0.0  # the first usable step is the baseline of both
    assert score(0.30, 0.03) > 0 > score(0.50, 0.01)
