"""plot_weights: teacher and task weights over training, drawn from a synthetic steps.csv."""

from __future__ import annotations

import csv

import numpy as np

from polydistill.reporting.figures import _running_mean, plot_weights, strategy_names

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_steps(path, columns, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def test_plot_weights_writes_png_with_empty_cells(tmp_path):
    columns = ["step", "loss", "loss/depth/gt", "weight/depth/gt", "task_weight/depth", "task_weight/semseg",
               "teacher_weight/depth/t1", "teacher_weight/semseg/t2", "teacher_weight/semseg/t3"]
    rows = []
    for step in range(1, 31):
        rows.append({
            "step": step, "loss": 1.0 / step, "loss/depth/gt": 0.5, "weight/depth/gt": 1.0,
            "task_weight/depth": 1.0 + 0.01 * step,
            # semseg absent in odd steps: empty cells
            "task_weight/semseg": "" if step % 2 else 0.9,
            "teacher_weight/depth/t1": 1.0,
            "teacher_weight/semseg/t2": "" if step % 2 else 0.4 + 0.01 * step,
            "teacher_weight/semseg/t3": "" if step % 2 else 0.6 - 0.01 * step,
        })
    _write_steps(tmp_path / "steps.csv", columns, rows)
    out = tmp_path / "weights.png"
    assert plot_weights(tmp_path, out) == out
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_plot_weights_only_one_level(tmp_path):
    _write_steps(tmp_path / "steps.csv", ["step", "loss", "task_weight/depth"],
                 [{"step": s, "loss": 1.0, "task_weight/depth": 1.0} for s in range(1, 4)])
    out = tmp_path / "weights.png"
    assert plot_weights(tmp_path, out) == out
    assert out.stat().st_size > 0


def test_plot_weights_none_without_weight_columns(tmp_path):
    _write_steps(tmp_path / "steps.csv", ["step", "loss", "loss/depth/gt", "weight/depth/gt"],
                 [{"step": s, "loss": 1.0, "loss/depth/gt": 1.0, "weight/depth/gt": 1.0} for s in range(1, 4)])
    out = tmp_path / "weights.png"
    assert plot_weights(tmp_path, out) is None
    assert not out.exists()


def test_plot_weights_header_only(tmp_path):
    _write_steps(tmp_path / "steps.csv", ["step", "loss", "task_weight/depth", "teacher_weight/depth/t1"], [])
    out = tmp_path / "weights.png"
    assert plot_weights(tmp_path, out) is None
    assert not out.exists()


def test_running_mean_trailing_window():
    y = np.arange(1.0, 6.0)
    np.testing.assert_allclose(_running_mean(y, 2), [1.0, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(_running_mean(y, 10), np.cumsum(y) / np.arange(1, 6))


def test_strategy_names_from_config(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "distill:\n  teacher_weighting:\n    name: feedback\n    options: {}\n"
        "  task_weighting:\n    name: dwa\n    options: {}\n")
    assert strategy_names(tmp_path) == ("feedback", "dwa")
    assert strategy_names(tmp_path / "missing") == ("?", "?")
