"""Deployment commands: ``export`` (ONNX + parity check), ``bench latency`` and ``predict``.

Kept beside :mod:`polydistill.cli` so that file stays short; :func:`register` adds the commands to its app.
Heavy imports (torch, onnxruntime, OpenCV) happen inside the commands, so ``polydistill --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .common import console, print_plain, print_status

bench_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Measure models side by side.")


def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint or run directory")],
    out: Annotated[Path, typer.Option(help="ONNX file to write (the sidecar goes to OUT.json)")] = Path(
        "student.onnx"),
    images: Annotated[list[Path] | None, typer.Option(
        "--images", help="real images for the parity check: files, folders, a dataset folder or quoted globs "
                         "(default: the run's validation split)")] = None,
    tolerance: Annotated[float, typer.Option(help="largest allowed absolute difference from eager PyTorch")] = 1e-4,
    torchscript: Annotated[bool, typer.Option(help="also write a traced TorchScript file (OUT.torchscript.pt)")]
    = False,
    check: Annotated[bool, typer.Option(help="compare with eager PyTorch on real images")] = True,
    max_images: Annotated[int, typer.Option(help="images used by the parity check")] = 8,
    height: Annotated[int | None, typer.Option(help="export size (default: the training size)")] = None,
    width: int | None = None,
):
    """Export a student to ONNX (task-space outputs, dynamic sizes), checked against eager PyTorch (exit 1 if off)."""
    from ..deploy.export import export_checkpoint

    result = export_checkpoint(checkpoint, out, images=images, tolerance=tolerance, size=(height, width),
                               torchscript=torchscript, check=check, max_images=max_images)
    written = f"wrote {result.onnx} and {result.sidecar}" + (f" and {result.torchscript}" if result.torchscript
                                                               else "")
    if not check:
        print_plain(written)
        return
    from rich.table import Table

    table = Table(title=f"parity with eager PyTorch on {len(result.images)} images (max |difference|)")
    for col in ("runtime", "output", "max abs diff", "largest |value|", "sizes checked", "ok"):
        table.add_column(col)
    for report in result.parity:
        sizes = ", ".join(f"{c['batch']}×{c['size'][0]}×{c['size'][1]}" for c in report.checks)
        for name, diff in report.max_abs_diff.items():
            table.add_row(report.runtime, name, f"{diff:.2e}", f"{report.max_abs_value[name]:.3g}", sizes,
                          "[green]yes[/]" if diff <= tolerance else "[bold red]NO[/]")
    console.print(table)
    if not result.ok:
        print_status("parity failed", f": a difference exceeds the tolerance {tolerance:g}; nothing was written",
                     "bold red")
        raise typer.Exit(1)
    print_plain(written)
    print_status("parity ok", f" (tolerance {tolerance:g})")


def bench_latency_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="student checkpoint or run directory")],
    onnx: Annotated[Path | None, typer.Option(help="exported model (default: export the checkpoint to a "
                                                   "temporary file)")] = None,
    teachers: Annotated[list[str] | None, typer.Option(
        "--teacher", help="[NAME=]teacher checkpoint directory, or a prefixed source as in configs (onnx:FILE, "
                          "hf:ID, timm:NAME, torchvision:NAME); repeat for several")] = None,
    sizes: Annotated[str, typer.Option(help="HEIGHTxWIDTH list")] = "96x128,192x256",
    batch: Annotated[str, typer.Option(help="batch sizes")] = "1,8",
    rounds: Annotated[int, typer.Option(help="interleaved timing rounds (the median is reported)")] = 7,
    iters: Annotated[int, typer.Option(help="calls per round")] = 5,
    warmup: Annotated[int, typer.Option(help="untimed calls per model first")] = 3,
    threads: Annotated[int | None, typer.Option(help="CPU threads for PyTorch and ONNX Runtime")] = None,
    out: Annotated[Path, typer.Option(help="folder for latency.json and latency.md")] = Path("runs/bench_latency"),
):
    """Median latency of the student (eager PyTorch and ONNX Runtime) and each teacher, per size and batch (CPU)."""
    from ..deploy.latency import bench_latency, latency_markdown, latency_table, parse_batches, parse_sizes

    result = bench_latency(checkpoint, onnx=onnx, teachers=teachers or [], sizes=parse_sizes(sizes),
                           batches=parse_batches(batch), rounds=rounds, iters=iters, warmup=warmup, threads=threads)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(result, indent=2))
    (out / "latency.md").write_text(latency_markdown(result))
    Console().print(latency_table(result))
    print_status("done", f": {out / 'latency.json'}, {out / 'latency.md'}")


def predict_cmd(
    model: Annotated[Path, typer.Argument(help="checkpoint or run directory, or an exported .onnx file")],
    inputs: Annotated[list[str], typer.Argument(help="images, folders, quoted glob patterns ('photos/*.jpg') or "
                                                     "videos (.mp4, .avi, .mov, .mkv)")],
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/predict"),
    height: Annotated[int | None, typer.Option(help="model input size (default: the training size)")] = None,
    width: int | None = None,
    raw: Annotated[bool, typer.Option(help="write the raw task-space outputs as .npy")] = True,
    video_frames: Annotated[bool, typer.Option(help="also write every video frame's files (large)")] = False,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime threads")] = None,
    progress: bool = True,
):
    """Depth, classes, boxes with distances and raw outputs for images, folders, globs and videos (with fps)."""
    from ..deploy.predict import predict

    summary = predict(model, [Path(p) for p in inputs], out, size=(height, width), raw=raw,
                      video_frames=video_frames, progress=progress, threads=threads, console=console)
    parts = [f"{summary['images']} images"]
    for v in summary["videos"]:
        parts.append(f"video {Path(v['input']).name}: {v['frames']} frames, {v['fps_model']:.1f} fps model only, "
                     f"{v['fps_end_to_end']:.1f} fps end to end -> {v['output']}")
    print_status("done", f" ({summary['backend']}): " + "; ".join(parts) + f" -> {out}")
    if summary["skipped"]:
        print_status(f"skipped {len(summary['skipped'])} unreadable file(s)", ": "
                     + ", ".join(s["file"] for s in summary["skipped"][:10])
                     + (" ..." if len(summary["skipped"]) > 10 else "") + f" (see {out / 'summary.json'})", "yellow")


def register(app: typer.Typer, friendly_errors) -> None:
    """Add ``export``, ``bench latency`` and ``predict`` to the main app (errors printed as one line)."""
    app.command("export")(friendly_errors(export_cmd))
    app.command("predict")(friendly_errors(predict_cmd))
    bench_app.command("latency")(friendly_errors(bench_latency_cmd))
    app.add_typer(bench_app, name="bench")
