"""train.tensorboard: the TensorBoard event files hold exactly the numbers of steps.csv and val.jsonl."""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys

import pytest

from polydistill.config import load_config
from polydistill.errors import ConfigError
from polydistill.pipeline.train import check_names, train_run
from tests.conftest import tiny_config


def _scalars(log_dir) -> dict[str, dict[int, float]]:
    pytest.importorskip("tensorboard", reason="the optional tensorboard package (polydistill's extra) is missing")
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})  # 0: keep every event
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag}: a step was logged twice: {steps}"
        out[tag] = {e.step: e.value for e in events}
    return out


def _csv_columns(path) -> dict[str, dict[int, float]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in rows[0] if c != "step"]
    return {c: {int(r["step"]): float(r[c]) for r in rows if r[c] != ""} for c in columns}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5, abs=1e-9)


def _check_matches_logs(run) -> None:
    scalars = _scalars(run / "tensorboard")
    expected = _csv_columns(run / "steps.csv")
    for record in map(json.loads, (run / "val.jsonl").read_text().splitlines()):
        for task, metrics in record["metrics"].items():
            for name, value in metrics.items():
                expected.setdefault(f"val/{task}/{name}", {})[record["step"]] = value
    expected = {tag: values for tag, values in expected.items() if values}
    assert set(scalars) == set(expected)
    for tag, values in expected.items():
        assert set(scalars[tag]) == set(values), tag
        for step, value in values.items():
            assert _same(scalars[tag][step], value), (tag, step, scalars[tag][step], value)


def test_scalars_match_steps_csv_and_validation(tiny_data, teacher_runs, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package (polydistill's extra) is missing")
    cfg = tiny_config(tiny_data["train"], tiny_data["val"], tensorboard=True, report=False)
    cfg["teachers"] = [{"name": "t", "source": "checkpoint", "path": str(teacher_runs["depth"])}]
    cfg["distill"] = {"task_weighting": "uncertainty"}  # task weights that change, and a negative aux loss
    run = tmp_path / "run"
    train_run(load_config(base=cfg), run)
    _check_matches_logs(run)
    tags = set(_scalars(run / "tensorboard"))
    assert {"loss", "lr", "loss/depth/t", "loss/semseg/gt", "task_weight/depth", "val/depth/abs_rel",
            "val/semseg/miou"} <= tags
    # the option is off by default: the teachers' runs wrote no event file
    assert not (teacher_runs["depth"] / "tensorboard").exists()


def test_resume_continues_without_duplicates(tiny_data, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package (polydistill's extra) is missing")
    cfg = load_config(base=tiny_config(tiny_data["train"], tiny_data["val"], tensorboard=True, report=False))
    run = tmp_path / "run"
    train_run(cfg, run, stop_at_step=3)
    shutil.copytree(run / "checkpoints" / "last", tmp_path / "last_at_3")
    train_run(cfg, run, resume=True)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    _check_matches_logs(run)
    assert sorted(_scalars(run / "tensorboard")["loss"]) == [1, 2, 3, 4, 5, 6]
    # as after a crash: the checkpoint is older than the logs (steps 4-6 were logged after it). Resuming
    # recomputes 4-6; the CSV drops its rows after step 3 and TensorBoard purges its events after it too
    shutil.rmtree(run / "checkpoints" / "last")
    shutil.copytree(tmp_path / "last_at_3", run / "checkpoints" / "last")
    train_run(cfg, run, resume=True)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 3
    _check_matches_logs(run)  # each step once, with the values of the last run


def test_missing_package_is_a_config_error(tiny_data, monkeypatch):
    cfg = load_config(base=tiny_config(tiny_data["train"], tiny_data["val"], tensorboard=True))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ConfigError, match=r"train\.tensorboard is true.*pip install tensorboard"):
        check_names(cfg)
    check_names(load_config(base=tiny_config(tiny_data["train"], tiny_data["val"])))  # off: no import needed
