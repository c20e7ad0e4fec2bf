"""Run logs: one CSV row per training step (every loss term and weight), one JSON line per validation."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class StepLog:
    """Appends to ``steps.csv``; the columns are fixed when the file is created (resume appends)."""

    def __init__(self, path: Path, columns: list[str], *, resume: bool):
        self.path = path
        self.columns = columns
        new = not (resume and path.exists())
        self._fh = open(path, "w" if new else "a", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=columns, extrasaction="ignore")
        if new:
            self._writer.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


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
