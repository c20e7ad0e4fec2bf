"""Run logs: one CSV row per training step (every loss term and weight), one JSON line per validation, and
optionally the same numbers as TensorBoard scalars (``train.tensorboard``).

The CSV and JSON lines are the record of a run (the reports read them); TensorBoard is a live view beside
them, for people who watch runs in it. Only the main process logs (the trainer creates no log elsewhere).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def require_tensorboard():
    """torch's ``SummaryWriter``; a :class:`ConfigError` that names the option and the fix when the optional
    ``tensorboard`` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(
            f"train.tensorboard is true but TensorBoard cannot be imported ({exc}); install it with "
            "`pip install tensorboard` (or the project's tensorboard extra), or set train.tensorboard: false"
        ) from None
    return SummaryWriter


class StepLog:
    """Appends to ``steps.csv``; the columns are fixed when the file is created (resume appends).

    With ``tensorboard`` (a folder), every column but ``step`` is also written as a scalar with the column's
    name as its tag (``loss``, ``loss/depth/gt``, ``task_weight/semseg``, ...) at x = step, and
    :meth:`write_validation` writes ``val/<task>/<metric>``. On resume, TensorBoard is told to drop events
    after ``start_step`` (``purge_step``), as the CSV drops its rows after the checkpoint.
    """

    def __init__(self, path: Path, columns: list[str], *, resume: bool, tensorboard: Path | None = None,
                 start_step: int = 0):
        self.path = path
        self.columns = columns
        new = not (resume and path.exists())
        self._tb = None
        if tensorboard is not None:
            writer = require_tensorboard()
            self._tb = writer(log_dir=str(tensorboard), purge_step=None if new else start_step + 1)
        self._fh = open(path, "w" if new else "a", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=columns, extrasaction="ignore")
        if new:
            self._writer.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        if self._tb is not None and "step" in row:
            for key in self.columns:
                value = row.get(key)
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, float(value), int(row["step"]))

    def write_validation(self, step: int, metrics: dict[str, dict[str, float]]) -> None:
        """Validation metrics as TensorBoard scalars ``val/<task>/<metric>`` (val.jsonl is written apart)."""
        if self._tb is None:
            return
        for task, values in metrics.items():
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"val/{task}/{name}", float(value), step)

    def flush(self) -> None:
        self._fh.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def truncate_after(path: Path, step: int) -> None:
    """On resume, drop log rows written after the checkpoint (they will be recomputed identically)."""
    if not path.exists():
        return
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        keep = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= step]
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows(keep)
    else:
        lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def read_steps(path: Path) -> list[dict[str, float]]:
    """Read ``steps.csv`` back as numbers (blank cells, i.e. terms absent in a batch, are skipped)."""
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
