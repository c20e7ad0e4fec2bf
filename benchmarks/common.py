"""What every benchmark shares: the command line it records, its results files, Markdown and console tables,
and the summary statistics over seeds or rounds."""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """How to run this measurement again, for the results file: ``python -m benchmarks.NAME ARGS`` (the
    arguments default to this process's; with the ``PYTHONPATH`` it ran under, if any)."""
    argv = sys.argv[1:] if argv is None else argv
    pythonpath = os.environ.get("PYTHONPATH")
    prefix = f"PYTHONPATH={pythonpath} " if pythonpath else ""
    return prefix + shlex.join(["python", "-m", module, *argv])


def device() -> str:
    """Where a benchmark trains and evaluates: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def read_steps(steps_csv: Path) -> list[dict[str, float]]:
    """A run's ``steps.csv`` (one row per logged optimizer step) as numbers; blank cells (terms absent from a
    batch) are left out."""
    with open(steps_csv, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def table_header(headers: Sequence[str], align: str | None = None) -> list[str]:
    """The first two lines of a Markdown table. ``align`` has one letter per column, ``l`` (text) or ``r``
    (numbers); default: the first column left, the others right."""
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers):
        raise ValueError(f"align '{align}' has {len(align)} letters for {len(headers)} columns")
    return ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]


def table_row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> list[str]:
    """A whole Markdown table, as lines."""
    return table_header(headers, align) + [table_row(row) for row in rows]


def write_results(out: Path, results: dict[str, Any], markdown: str, name: str = "results") -> tuple[Path, Path]:
    """``OUT/results.json`` (every number) and ``OUT/results.md`` (the tables; ``name`` replaces ``results``);
    returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_file, md_file = out / f"{name}.json", out / f"{name}.md"
    json_file.write_text(json.dumps(results, indent=2, default=str))
    md_file.write_text(markdown)
    return json_file, md_file


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[str]], align: str | None = None) -> None:
    """The summary on stdout as a console table (at least 120 columns wide, so numbers are not wrapped);
    ``align`` as in :func:`table_header`."""
    align = align or "l" + "r" * (len(headers) - 1)
    table = Table(title=title)
    for header, a in zip(headers, align):
        table.add_column(header, justify="right" if a == "r" else "left")
    for row in rows:
        table.add_row(*row)
    Console(width=max(120, Console().width)).print(table)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation, NaNs left out (NaN when there is nothing, std NaN for one value)."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return float("nan"), float("nan")
    return statistics.fmean(kept), (statistics.stdev(kept) if len(kept) > 1 else float("nan"))
