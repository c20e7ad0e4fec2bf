"""``polydistill data``: dataset commands (``check``), registered in :mod:`polydistill.cli` as a sub-app.

Heavy imports (torch, the dataset readers) happen inside the commands, so ``polydistill --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from .common import console, error_message, print_error

out = Console()


def _say(label: str, style: str, message: str) -> None:
    """A report line: ``label`` styled, the message verbatim (file names and hints keep their brackets)."""
    out.print(Text.assemble((label, style), " ", message), soft_wrap=True, highlight=False)

data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Inspect datasets (any supported layout).")


def _options(pairs: list[str]) -> dict:
    """``["classes=40", "split_file=/x/splits.mat"]`` -> ``{"classes": 40, ...}`` (values parsed as YAML)."""
    import yaml

    from ..errors import ConfigError

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option '{pair}' must look like KEY=VALUE (e.g. classes=40)")
        options[key.strip()] = yaml.safe_load(value)
    return options


@data_app.command("check")
def check(
    path: Annotated[Path, typer.Argument(help="dataset root (a folder, or the NYUv2 .mat file)")],
    format: Annotated[str, typer.Option(help="auto, folder, nyuv2, nyuv2_npy, cityscapes or coco")] = "auto",
    split: Annotated[list[str] | None, typer.Option(
        "--split", help="split(s) to check (default: every split present)")] = None,
    option: Annotated[list[str] | None, typer.Option(
        "--option", help="format option KEY=VALUE, as in data.format_options (e.g. classes=40)")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="also write the full report as JSON here")] = None,
    limit: Annotated[int | None, typer.Option(help="check only the first N images of each split")] = None,
    progress: bool = True,
):
    """Read every image and label once: counts per label type, class histogram, size mismatches and unreadable
    files (all of them, not only the first), boxes that cannot be right and an ignore index that is also a class.
    Exits 1 when it found problems, 2 when the dataset (or one of its splits) cannot be opened."""
    from rich.progress import Progress
    from rich.table import Table

    from ..data.check import check_dataset, write_json
    from ..errors import PolydistillError
    from ..tasks import TASKS

    try:
        with Progress(disable=not progress, transient=True, console=console) as bar:
            jobs: dict = {}

            def step(name, done, total):
                if name not in jobs:
                    jobs[name] = bar.add_task(f"checking {name or 'dataset'}", total=total)
                bar.update(jobs[name], completed=done)

            reports = check_dataset(path, format, split, _options(option or []), limit=limit, progress=step)
    except PolydistillError as exc:
        print_error(error_message(exc))
        raise typer.Exit(2) from None

    for report in reports:
        title = f"{report.path} — {report.format}" + (f", split {report.split}" if report.split else "")
        if report.error:
            out.print(Text.assemble((title, "bold"), ": ", ("cannot be opened", "bold red"), f": {report.error}"),
                      soft_wrap=True, highlight=False)
            continue
        summary = Table(title=Text(title), show_header=False)
        summary.add_row("images", str(report.images) + ("" if report.checked == report.images
                                                        else f" ({report.checked} checked)"))
        for task, count in report.labels.items():
            summary.add_row(f"{task} labels", str(count))
        for task, values in report.summaries.items():
            if values:
                summary.add_row(task, TASKS.get(task).describe_label_summary(values))
        if report.classes:
            clash = " (also a class: a problem)" if report.classes_problem else " (not a class)"
            summary.add_row("ignore index", f"{report.ignore_index}{clash}")
        summary.add_row("size mismatches", str(len(report.size_mismatches)))
        summary.add_row("unreadable / invalid files", str(len(report.unreadable)))
        summary.add_row("impossible boxes", str(len(report.boxes)))
        summary.add_row("listing problems", str(len(report.listing)))
        out.print(summary)
        if report.histogram:
            hist = Table(title="class histogram")
            hist.add_column("class")
            kinds = list(report.histogram)
            for kind in kinds:
                hist.add_column(TASKS.get(kind).histogram_unit, justify="right")
            names = list(dict.fromkeys(n for kind in kinds for n in report.histogram[kind]))
            for name in names:
                hist.add_row(Text(name), *(str(report.histogram[k].get(name, "")) for k in kinds))
            out.print(hist)
        if report.classes_problem:
            _say("problem", "red", report.classes_problem)
        for item in report.size_mismatches:
            _say("size mismatch", "yellow", f"{item['label']} is {item['label_size'][0]}x{item['label_size'][1]} "
                 f"but {item['image']} is {item['image_size'][0]}x{item['image_size'][1]} (HxW)")
        for item in report.unreadable:  # the message names the file
            _say("problem", "red", item["problem"])
        for item in report.boxes:  # a folder's boxes file is named after its image; COCO's holds every image's
            own = Path(item["file"]).stem == Path(item["image"]).stem
            _say("problem", "red", f"{item['file'] if own else item['file'] + ' (image ' + item['image'] + ')'}: "
                 f"{item['problem']}")
        for item in report.listing:
            _say("problem", "red", f"{item['file']}: {item['problem']}")
    if json_path is not None:
        write_json(reports, json_path)
    problems = sum(r.problem_count for r in reports)
    if problems:
        console.print(Text(f"{problems} problem(s) found", style="bold red"), highlight=False)
        raise typer.Exit(2 if any(r.error for r in reports) else 1)
    console.print("[bold green]no problems found[/]")
