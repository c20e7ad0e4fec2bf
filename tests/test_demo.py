"""The quick demo end to end (tiny sizes), and the shipped example configs validate."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from polydistill.config import load_config
from polydistill.pipeline.train import check_names

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path):
    check_names(load_config(path))


@pytest.mark.slow
def test_quick_demo_end_to_end(quick_demo, tmp_path):
    out = quick_demo.out  # the session's quick demo run (tests/conftest.py), in its own empty cache
    cmd = [sys.executable, "-m", "polydistill.cli", "demo", "--preset", "quick", "--out", str(out), "--no-progress"]
    m = json.loads((out / "metrics.json").read_text())
    for name, task in (("depth_teacher", "depth"), ("seg_teacher", "semseg"), ("depth_teacher_dusk", "depth"),
                       ("det_teacher", "detection")):
        assert task in m["teachers"][name]
    for who in ("student", "label_only"):
        assert set(m[who]["depth"]) >= {"abs_rel", "rmse", "delta1"}
        assert set(m[who]["semseg"]) >= {"miou", "pixel_acc"}
        assert 0 < m[who]["semseg"]["miou"] <= 1 and m[who]["depth"]["abs_rel"] > 0
        assert 0 <= m[who]["detection"]["map50"] <= 1 and set(m[who]["detection"]) >= {"map", "map75"}
    assert "## Detection (test split)" in (out / "report.md").read_text()
    assert isinstance(m["delta_m_vs_teachers"], float) and isinstance(m["delta_m_label_only_vs_teachers"], float)
    assert m["speed"]["ratio"] == pytest.approx(m["speed"]["teachers_ms"] / m["speed"]["student_ms"])
    assert m["wall_s"] > 0 and m["data"]["test"]["images"] == 32
    for name in ("report.md", "loss_curves.png", "validation.png", "samples.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "student" / "checkpoints" / "best" / "model.safetensors").exists()
    # the check tool shipped with the project reads the same file (targets are for the default preset)
    check = ROOT.parent / "shared" / "tools" / "check_demo_metrics.py"
    if check.exists():
        result = subprocess.run([sys.executable, str(check), str(out / "metrics.json")], capture_output=True, text=True)
        assert "targets hold" in result.stdout

    # a rerun reuses the cached data and teachers
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=quick_demo.env)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("cached at") == 4  # progress and messages go to stderr

    # the student predicts depth, classes and boxes in one pass; predict labels boxes with class and distance
    images = sorted((Path(m["data"]["test"]["folder"]) / "images").iterdir())[:2]
    pred = subprocess.run([sys.executable, "-m", "polydistill.cli", "predict", str(out / "student"), *map(str, images),
                           "--out", str(tmp_path / "pred")], capture_output=True, text=True, timeout=300)
    assert pred.returncode == 0, pred.stdout + pred.stderr
    found = json.loads((tmp_path / "pred" / f"{images[0].stem}_detection.json").read_text())["detections"]
    assert all(set(d) == {"box", "class", "score", "median_depth_m"} for d in found)
    for suffix in ("_depth.png", "_semseg.png", "_detection_vis.png"):
        assert (tmp_path / "pred" / f"{images[0].stem}{suffix}").stat().st_size > 0


def test_teacher_cache_key_ignores_paths_and_progress(tmp_path):
    from polydistill.demo.story import PRESETS, _base_config, teacher_fingerprint

    preset = PRESETS["quick"]
    kw = dict(tasks={"depth": {}}, backbone="resnet18", neck=8, steps=3, batch=2, lr=1e-3, seed=0, zoom=(1.0, 1.0))
    a = _base_config(preset, tmp_path / "a", tmp_path / "v", progress=True, **kw)
    b = _base_config(preset, tmp_path / "b", tmp_path / "w", progress=False, **kw)
    data_fp = {"train": "x", "val": "y"}
    assert teacher_fingerprint(a, data_fp) == teacher_fingerprint(b, data_fp)
    assert teacher_fingerprint(a, data_fp) != teacher_fingerprint(a, {"train": "x", "val": "z"})
    c = _base_config(preset, tmp_path / "a", tmp_path / "v", progress=True, **(kw | {"steps": 4}))
    assert teacher_fingerprint(a, data_fp) != teacher_fingerprint(c, data_fp)


def test_teacher_test_metrics_are_computed_once_per_teacher_and_split(quick_demo, monkeypatch, tmp_path):
    """The quick demo stored each cached teacher's test metrics; evaluating again reads them (no teacher runs)
    and gets the numbers the demo reported. Changed weights mean a new key, so they are evaluated afresh."""
    from polydistill.demo import story as demo

    cache = Path(quick_demo.env["POLYDISTILL_CACHE"])
    monkeypatch.setenv("POLYDISTILL_CACHE", str(cache))
    runs = {name: next((cache / "teachers").glob(f"{name}-*")) for name in demo.TEACHERS}
    assert all(len(list(run.glob("test_metrics-*.json"))) == 1 for run in runs.values())
    preset = demo.PRESETS["quick"]
    test = demo.FolderDataset(next((cache / "data").glob("test-*")), demo.DEMO_TASKS,
                              image_size=(preset.height, preset.width))

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a teacher with stored test metrics was evaluated again")

    monkeypatch.setattr(demo, "evaluate", no_evaluation)
    _, metrics = demo.evaluate_teachers(runs, test, "cpu")
    assert metrics == json.loads((quick_demo.out / "metrics.json").read_text())["teachers"]

    copy = tmp_path / "det_teacher"
    shutil.copytree(runs["det_teacher"], copy)
    weights = next((copy / "checkpoints").rglob("model.safetensors"))
    assert demo._teacher_metrics_file(copy, test).name == demo._teacher_metrics_file(runs["det_teacher"], test).name
    weights.write_bytes(weights.read_bytes() + b" ")  # other weights, other key: evaluated afresh
    assert demo._teacher_metrics_file(copy, test).name != demo._teacher_metrics_file(runs["det_teacher"], test).name


def test_students_trained_side_by_side_equal_students_trained_one_after_the_other(tiny_data, tmp_path):
    """The demo trains its two students at once, one process each; at the same thread count the models are
    the ones sequential training gives, and an error in the second process is raised in the first."""
    import torch
    from safetensors.torch import load_file

    from polydistill.demo.story import train_runs
    from polydistill.errors import DataError
    from tests.conftest import tiny_config

    jobs = {mode: [(tiny_config(tiny_data["train"], None, max_steps=2), tmp_path / mode / "a"),
                   (tiny_config(tiny_data["train"], None, max_steps=3, seed=1), tmp_path / mode / "b")]
            for mode in ("sequential", "side_by_side")}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        train_runs(jobs["sequential"], side_by_side=False)
        torch.set_num_threads(2)  # side by side: one thread each
        times = train_runs(jobs["side_by_side"], side_by_side=True)
        assert torch.get_num_threads() == 2 and len(times) == 2 and all(t > 0 for t in times)
        for run in ("a", "b"):
            a, b = (load_file(str(tmp_path / mode / run / "checkpoints" / "last" / "model.safetensors"))
                    for mode in jobs)
            assert all(torch.equal(a[k], b[k]) for k in a), run

        missing = tiny_config(tmp_path / "no_such_folder", None)
        broken = [(jobs["sequential"][0][0], tmp_path / "c"), (missing, tmp_path / "d")]
        with pytest.raises(DataError, match="no_such_folder"):
            train_runs(broken, side_by_side=True)
    finally:
        torch.set_num_threads(threads)
