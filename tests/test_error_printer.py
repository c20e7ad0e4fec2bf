"""The one error printer: messages reach the user verbatim (no Rich markup), worker errors as their own line."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from polydistill.cli import app
from polydistill.cli.common import error_message
from polydistill.errors import DataError
from tests.conftest import tiny_config, write_tiny_dataset

runner = CliRunner()


def train(tmp_path, cfg):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "run")])
    return result, " ".join(result.output.split())


def test_brackets_in_paths_and_hints_survive(tmp_path):
    """A dataset under ``scan[raw]/`` is named at its real path; ``[/]`` in a path does not crash the printer."""
    for folder in ("scan[raw]", "odd[/]name"):
        data = write_tiny_dataset(tmp_path / folder / "train", 4, seed=1)
        (data / "classes.yaml").write_text("names: [floor, wall\n")  # malformed: the hint shows the format
        result, text = train(tmp_path / folder, tiny_config(data, None))
        assert result.exit_code == 2, result.output
        assert f"{folder}/train/classes.yaml" in text
        assert "names: [floor, wall, ...]" in text  # the fix hint keeps its brackets
        assert "Traceback" not in result.output


def test_a_data_loader_worker_error_is_one_line(tmp_path):
    data = write_tiny_dataset(tmp_path / "train", 8, seed=1)
    (data / "images" / "0003.png").write_bytes(b"not a png")
    cfg = tiny_config(data, None, max_steps=4)
    cfg["data"]["num_workers"] = 2
    result, text = train(tmp_path, cfg)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert text.startswith("error: cannot read") and "0003.png" in text
    assert "Original Traceback" not in result.output and "DataLoader worker" not in result.output


def test_error_message_unwraps_the_worker_traceback():
    wrapped = DataError("Caught DataError in DataLoader worker process 1.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1, in f\n    raise DataError(...)\n"
                        "polydistill.errors.DataError: cannot read a.png: truncated\n")
    assert error_message(wrapped) == "cannot read a.png: truncated"
    assert error_message(DataError("plain [message]")) == "plain [message]"
