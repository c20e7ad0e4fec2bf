"""The command line: user errors are one clear line and a non-zero exit; commands do their job."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from polydistill.cli import app
from tests.conftest import tiny_config, write_tiny_dataset

runner = CliRunner()


def write_config(tmp_path, cfg: dict):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result, " ".join(result.output.split())


def test_unknown_key_is_one_line_with_suggestion(tiny_data, tmp_path):
    path = write_config(tmp_path, tiny_config(tiny_data["train"], tiny_data["val"]))
    result, text = run_cli("train", path, "train.epoch=3", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "unknown config key 'train.epoch'" in text and "did you mean 'epochs'" in text
    assert "Traceback" not in result.output


def test_missing_dataset_folder(tmp_path):
    path = write_config(tmp_path, tiny_config(tmp_path / "nowhere", None))
    result, text = run_cli("train", path, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "does not exist" in text and "nowhere" in text


def test_corrupt_image_names_the_file(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 8, seed=3)
    (data / "images" / "0003.png").write_bytes(b"not a png at all")
    path = write_config(tmp_path, tiny_config(data, None, max_steps=2))
    result, text = run_cli("train", path, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "0003.png" in text


def test_class_id_out_of_range(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 8, seed=4)
    bad = np.array(Image.open(data / "semseg" / "0005.png"))
    bad[0, 0] = 9
    Image.fromarray(bad).save(data / "semseg" / "0005.png")
    path = write_config(tmp_path, tiny_config(data, None, max_steps=2))
    result, text = run_cli("train", path, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "0005.png" in text and "9" in text


def test_config_command_prints_resolved_config(tiny_data, tmp_path):
    path = write_config(tmp_path, tiny_config(tiny_data["train"], tiny_data["val"]))
    result = runner.invoke(app, ["config", str(path), "train.lr=0.5"])
    assert result.exit_code == 0
    assert yaml.safe_load(result.output)["train"]["lr"] == 0.5


def test_config_command_checks_strategy_names_and_options(tiny_data, tmp_path):
    path = write_config(tmp_path, tiny_config(tiny_data["train"], tiny_data["val"]))
    result, text = run_cli("config", path, "distill.task_weighting.name=gradnrom")
    assert result.exit_code == 2 and "did you mean 'gradnorm'" in text
    result, text = run_cli("config", path, "distill.teacher_weighting.name=rl", "distill.teacher_weighting.sigmma=1")
    assert result.exit_code == 2 and "unknown option 'sigmma'" in text and "did you mean 'sigma'" in text
    result, _ = run_cli("config", path, "distill.teacher_weighting.name=rl", "distill.teacher_weighting.sigma=1",
                        "distill.teacher_weighting.options.update=surrogate")
    assert result.exit_code == 0
    options = yaml.safe_load(result.output)["distill"]["teacher_weighting"]["options"]
    assert options == {"sigma": 1, "update": "surrogate"}  # beside the name and under options: both work


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    path = write_config(out.parent, tiny_config(tiny_data["train"], tiny_data["val"]))
    result, text = run_cli("train", path, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_eval_reports_metrics_and_latency(trained_run, tiny_data, tmp_path):
    result, _ = run_cli("eval", trained_run, "--data", tiny_data["val"], "--teacher", trained_run,
                        "--output", tmp_path / "eval.json")
    assert result.exit_code == 0, result.output

    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["metrics"]) == {"depth", "semseg"} and report["images"] == 8
    assert report["retention"]["depth"]["abs_rel"] == pytest.approx(1.0)  # compared with itself
    assert report["latency_ms"]["student"] > 0
    # Δm against an explicit baseline file: the model against its own numbers is exactly 0
    (tmp_path / "base.json").write_text(json.dumps(report["metrics"]))
    result, _ = run_cli("eval", trained_run, "--data", tiny_data["val"], "--baseline", tmp_path / "base.json",
                        "--output", tmp_path / "eval2.json")
    assert result.exit_code == 0, result.output
    delta = json.loads((tmp_path / "eval2.json").read_text())["delta_m"]
    assert delta["value"] == pytest.approx(0.0, abs=1e-9) and delta["convention"] == "primary"


def test_predict_writes_maps_and_pictures(trained_run, tiny_data, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("0000.png", "0001.png"):
        shutil.copy(tiny_data["val"] / "images" / name, images / name)
    result, _ = run_cli("predict", trained_run, images, "--out", tmp_path / "pred")
    assert result.exit_code == 0, result.output
    depth = np.array(Image.open(tmp_path / "pred" / "0000_depth.png"))
    classes = np.array(Image.open(tmp_path / "pred" / "0000_semseg.png"))
    assert depth.dtype == np.uint16 and depth.shape == (32, 48) and depth.min() > 0
    assert classes.shape == (32, 48) and classes.max() < 3
    assert (tmp_path / "pred" / "0001_depth_vis.png").exists()


def test_modules_command_lists_paths(trained_run):
    result, _ = run_cli("modules", trained_run, "--depth", "1")
    assert result.exit_code == 0 and set(result.output.split()) >= {"backbone", "neck", "heads"}
    result, _ = run_cli("modules", "timm:resnet18", "--depth", "2")
    assert result.exit_code == 0 and "layer4.1" in result.output.split()


def test_list_prints_what_is_registered_and_refuses_an_unknown_kind():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    out = result.stdout
    assert "tasks (5):" in out and "  normals" in out
    assert "python:" in out and "hf:" in out  # teacher sources with their prefix and description
    assert "teacher_weightings" in out and "students" not in out  # the long backbone list only on request
    students = runner.invoke(app, ["list", "students", "--filter", "mobilenetv3_small"])
    assert students.exit_code == 0 and "mobilenetv3_small_100" in students.stdout
    result, text = run_cli("list", "taskz")
    assert result.exit_code == 2 and "did you mean 'tasks'" in text
