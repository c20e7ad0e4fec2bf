"""The ``polydistill`` command line: demo, train, cache, report, eval, predict, export, bench, data, generate,
config, modules, list — parsing and printing over the public API (:mod:`polydistill.api`).

Errors the user can fix are printed as one line (what, where, how to fix) with a non-zero exit code;
anything else is a bug and keeps its traceback. Each command imports what it needs (torch, the models) inside
its body, so ``polydistill --help`` and typos answer at once; no such import hides a cycle.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError, PolydistillError
from .common import console, friendly_errors, print_plain, print_status

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distill many teachers into one compact multi-task student for dense prediction.")
@app.command()
@friendly_errors
def demo(
    out: Annotated[Path, typer.Option(
        help="folder for metrics.json, report.md, report.html and the student")] = Path("runs/demo"),
    preset: Annotated[str, typer.Option(
        help="quick (toy sizes, under two minutes) or default (the full story)")] = "default",
    seed: int = 0,
    workers: Annotated[int | None, typer.Option(help="processes for data generation")] = None,
    progress: bool = True,
    mixed_precision: Annotated[str, typer.Option(help="the students' autocast: no, bf16 or fp16 (GPU)")] = "no",
):
    """Distill four teachers (depth, a narrow depth, segmentation, detection) into one small student that predicts
    depth, classes and boxes in one pass, offline, on built-in data; compare it with a label-only student."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..demo.story import PRESETS, run_demo
    from ..registry import did_you_mean
    from ..tasks import TASKS

    if preset not in PRESETS:
        raise PolydistillError(f"unknown preset '{preset}'{did_you_mean(preset, list(PRESETS))}")
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise PolydistillError(f"--mixed-precision is '{mixed_precision}'; choose no, bf16 or fp16")
    metrics = run_demo(out, preset, seed=seed, workers=workers, progress=progress, log=print_plain,
                       mixed_precision=mixed_precision)
    s = metrics["speed"]
    primary = [(t, TASKS.get(t).primary_metric, v) for t, v in metrics["student"].items() if t in TASKS]
    headline = ", ".join(f"{t} {m} {v[m]:.4f}" for t, m, v in primary if m in v)
    print_status("done", f" in {metrics['wall_s']:.0f} s — student {headline}; "
                 f"Δm vs teachers {metrics['delta_m_vs_teachers']:+.2f} %; "
                 f"{s['ratio']:.1f}× faster than the teachers together. Report: {out / 'report.md'}")


@app.command()
@friendly_errors
def cache(
    config: Annotated[Path, typer.Argument(help="YAML config (its teachers and data.train)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted overrides, e.g. distill.cache.encoding=int8")]
    = None,
    out: Annotated[Path | None, typer.Option(help="cache root (default: distill.teacher_cache)")] = None,
    rebuild: Annotated[bool, typer.Option(help="delete and rebuild the cache even if it is valid")] = False,
    auto_rebuild: Annotated[bool, typer.Option("--auto-rebuild/--no-rebuild",
                                               help="rebuild a stale cache (default) or stop with an error")] = True,
):
    """Run the config's teachers once over its training images and store their outputs (train reuses them)."""
    from .. import api

    cfg = api.load_config(config, overrides or [])
    for split, store in api.cache_teachers(cfg, out, rebuild=auto_rebuild, force=rebuild).items():
        build = store.root / "build.json"
        info = json.loads(build.read_text()) if build.is_file() else {}
        n = len(store)
        for (teacher, task), output in store.outputs.items():
            print_plain(f"{teacher}/{task}: {output.encoding.kind}, shape {list(output.shape)}, "
                        f"{output.size_bytes / n / 1024:.1f} KiB per image")
        built = f"; built in {info['total_s']:.1f} s ({info['total_s'] / n * 1000:.1f} ms per image)" if info else ""
        print_status(f"cache ({split})", f" {store.root}: {n} images, {store.size_bytes() / 2**20:.1f} MiB{built}")


@app.command()
@friendly_errors
def train(
    config: Annotated[Path, typer.Argument(help="YAML config")],
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted overrides, e.g. train.epochs=3")] = None,
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option(help="continue from OUT/checkpoints/last")] = False,
):
    """Train a student (or, with one task and full labels, a teacher) from a config."""
    from .. import api
    from ..engine.distributed import shutdown

    result = api.train(api.load_config(config, overrides or []), out, resume=resume)
    if result.main_process:  # under torchrun / accelerate launch, one summary
        print_status("done", f": {result.fit.steps} steps; best step {result.fit.best_step}; "
                             f"checkpoints in {out / 'checkpoints'}")
        if result.fit.best_metrics:
            console.print_json(json.dumps(result.fit.best_metrics))
    shutdown()  # the command's process ends here: every rank leaves the process group together


@app.command()
@friendly_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="a training run directory or a demo output folder")],
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: RUN_DIR/report.html)")] = None,
    data: Annotated[Path | None, typer.Option(help="dataset folder for the sample grid (default: the run's "
                                                   "validation split, or the demo's test split)")] = None,
    teachers: Annotated[bool, typer.Option(help="draw the teachers' predictions in the sample grid")] = True,
):
    """Write one self-contained HTML report (tables, plots, sample grid) of a training run or a demo output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub teacher that is not cached is skipped, never downloaded
    from ..reporting.html import write_html_report

    path = write_html_report(run_dir, out, data=data, teachers=teachers)
    print_status("done", f": {path}")


@app.command("eval")
@friendly_errors
def eval_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint or run directory")],
    data: Annotated[Path, typer.Option(help="folder dataset to evaluate on")],
    height: int | None = None,
    width: int | None = None,
    baseline: Annotated[Path | None, typer.Option(help="metrics JSON {task: {metric: v}} for Δm")] = None,
    teachers: Annotated[list[str] | None, typer.Option(
        "--teacher", help="teachers to compare: a checkpoint folder or prefix:path of any source")] = None,
    output: Annotated[Path | None, typer.Option(help="write the results as JSON here")] = None,
):
    """Metrics of a checkpoint on a split; Δm against an explicit baseline; retention, size and latency."""
    from .. import api

    result = api.evaluate(checkpoint, data, size=(height, width) if height and width else None, baseline=baseline,
                          teachers=teachers or [])
    text = json.dumps(result, indent=2)
    if output:
        output.write_text(text)
    console.print_json(text)


@app.command()
@friendly_errors
def generate(
    out: Annotated[Path, typer.Argument(help="output folder (generic folder layout)")],
    count: Annotated[int, typer.Option(help="number of images")] = 100,
    height: int = 96,
    width: int = 128,
    seed: int = 0,
    workers: int | None = None,
):
    """Render a ShapeScenes split (RGB, metric depth, classes, boxes) in the generic folder layout."""
    from ..data.shapescenes import generate_split

    generate_split(out, count, seed=seed, height=height, width=width, workers=workers)
    print_status("done", f": {count} images in {out}")


@app.command("config")
@friendly_errors
def config_cmd(
    config: Annotated[Path, typer.Argument(help="YAML config")],
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted overrides")] = None,
):
    """Validate a config (keys, types, component names and strategy options) and print it fully resolved."""
    from ..config import dump_config, load_config
    from ..pipeline.train import check_names

    cfg = load_config(config, overrides or [])
    check_names(cfg)
    sys.stdout.write(dump_config(cfg))


@app.command("list")
@friendly_errors
def list_cmd(
    kind: Annotated[str | None, typer.Argument(help="tasks, teachers, weightings or students (default: all but "
                                                    "students, a long list of timm backbones)")] = None,
    filter: Annotated[str | None, typer.Option(help="only names containing this text (e.g. mobilenet)")] = None,
):
    """List what is registered: tasks, teacher sources (with their path prefix), weighting strategies, student
    backbones."""
    from .. import api
    from ..teachers import describe_sources

    kinds = api.list_components(kind) if kind else {k: v for k, v in api.list_components().items() if k != "students"}
    sources = {name: f"{prefix:<14} {text}" for name, prefix, text in describe_sources()}
    for name, items in kinds.items():
        shown = [i for i in items if not filter or filter in i]
        lines = [f"  {i:<14} {sources[i]}" if name == "teachers" and i in sources else f"  {i}" for i in shown]
        sys.stdout.write(f"{name} ({len(shown)}):\n" + "".join(f"{line.rstrip()}\n" for line in lines))


@app.command("modules")
@friendly_errors
def modules_cmd(
    model: Annotated[str, typer.Argument(help="a polydistill run/checkpoint folder, or timm:<model name>")],
    depth: Annotated[int | None, typer.Option(help="only paths with at most this many dotted parts")] = None,
):
    """List the module paths of a model (what recorders and feature distillation can hook)."""
    from ..recorders import module_paths
    from ..registry import did_you_mean
    from ..teachers import parse_source

    source, name = parse_source(model)
    if source == "timm":
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"unknown timm model '{name}'{did_you_mean(name, timm.list_models())}; "
                              "`polydistill list students` lists them")
        net = timm.create_model(name, pretrained=False)
    else:
        from ..checkpoint import load_student_model

        net = load_student_model(model, inference=False)[0]
    sys.stdout.write("\n".join(module_paths(net, max_depth=depth)) + "\n")


# export, bench latency and predict live in cli_deploy (heavy imports stay inside the commands)
from .deploy import register as _register_deploy  # noqa: E402

_register_deploy(app, friendly_errors)

# `polydistill data check` lives in cli_data (heavy imports stay inside the command)
from .data import data_app  # noqa: E402

app.add_typer(data_app, name="data")


if __name__ == "__main__":
    app()
