"""The HTML report: built from a tiny real run, opened in headless Chromium, checked and photographed.

The browser check drives Debian's ``chromium`` over the Chrome DevTools Protocol (``websocket-client``): it
loads the page from a file URL and collects every console message, uncaught exception, failed load and
network request, then checks in the page that every ``<img>`` decoded (``complete`` and ``naturalWidth >
0``) and that the expected section headings are there. A full-page screenshot is written to
``$POLYDISTILL_TEST_ARTIFACTS/report.png`` (default ``runs/test_artifacts/report.png`` in the repository)
so a person can look at it. The test is skipped only when no ``chromium`` executable is found.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from polydistill.config import load_config
from polydistill.errors import DataError
from polydistill.pipeline.train import train_run
from polydistill.reporting.html import build_report, render_html, write_html_report
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRAIN_SECTIONS = ["Configuration", "Validation metrics", "Speed", "Training curves", "Samples"]


def artifacts_dir() -> Path:
    """Where the screenshot is kept for people to look at (``$POLYDISTILL_TEST_ARTIFACTS`` overrides)."""
    return Path(os.environ.get("POLYDISTILL_TEST_ARTIFACTS", ROOT / "runs" / "test_artifacts"))


# ----------------------------------------------------------------------------------------- a tiny run


@pytest.fixture(scope="module")
def distilled_run(tiny_data, teacher_runs, tmp_path_factory) -> Path:
    """A 6-step student distilled from two tiny checkpoint teachers with adaptive weighting (so teacher and
    task weights vary), validated twice; then its report.html is written as ``polydistill train`` does after
    training (training itself never imports the reporting)."""
    cfg = tiny_config(tiny_data["train"], tiny_data["val"], report=True)
    cfg["teachers"] = [{"name": "depth_t", "source": "checkpoint", "path": str(teacher_runs["depth"])},
                       {"name": "seg_<t>", "source": "checkpoint", "path": str(teacher_runs["semseg"])}]
    cfg["distill"] = {"task_weighting": "uncertainty"}
    run = tmp_path_factory.mktemp("html") / "run"
    train_run(load_config(base=cfg), run)
    write_html_report(run, teachers=False)
    return run


class _Collect(HTMLParser):
    """Tags, attributes and text of a page (to check escaping and self-containment without a browser)."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Collect:
    parser = _Collect()
    parser.feed(page)
    return parser


def test_train_run_writes_self_contained_report(distilled_run):
    page = (distilled_run / "report.html").read_text()
    doc = _parse(page)
    headings = [t for t, _ in doc.tags if t == "h2"]
    assert len(headings) == len(TRAIN_SECTIONS)
    for section in TRAIN_SECTIONS:
        assert f">{section}</h2>" in page
    assert not any(tag == "script" for tag, _ in doc.tags)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)  # no external resource at all
    images = [a for t, a in doc.tags if t == "img"]
    # loss curves, weights, validation curves, and one sample grid per task (depth, semseg)
    assert len(images) == 5
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(attrs["src"].split(",", 1)[1]).startswith(PNG_MAGIC)
    text = "".join(doc.text)
    # the end-of-training report runs no teacher and says how to get them drawn
    assert "the teachers are not drawn" in text
    # a teacher name with markup is escaped, never interpreted
    assert "seg_<t>" in text and "<t>" not in page.replace("&lt;t&gt;", "")
    summary = json.loads((distilled_run / "summary.json").read_text())
    best = summary["best_metrics"]["depth"]["abs_rel"]
    assert f"{best:.4f}" in text


def test_report_command_draws_teachers_and_honours_out(distilled_run, tmp_path):
    from typer.testing import CliRunner

    from polydistill.cli import app

    out = tmp_path / "page.html"
    result = CliRunner().invoke(app, ["report", str(distilled_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "report.html").exists() and out.is_file()
    doc = _parse(out.read_text())
    text = "".join(doc.text)
    assert "the teachers are not drawn" not in text and "is not drawn" not in text
    # each sample grid gains one column per teacher of its task: input, GT, student, teacher (4 instead of 3)
    with_teachers = _grid_widths(out.read_text())
    without = _grid_widths((distilled_run / "report.html").read_text())
    assert set(with_teachers) == set(without) == {"depth samples", "semseg samples"}
    for name, width in with_teachers.items():
        assert width / without[name] == pytest.approx(4 / 3, rel=0.08), name


def _grid_widths(page: str) -> dict[str, int]:
    """Pixel width of each sample-grid PNG of a page (read from the PNG header)."""
    out = {}
    for tag, attrs in _parse(page).tags:
        if tag == "img" and attrs["alt"].endswith("samples"):
            png = base64.b64decode(attrs["src"].split(",", 1)[1])
            out[attrs["alt"]] = int.from_bytes(png[16:20], "big")
    return out


def test_missing_pieces_become_notes(distilled_run, tmp_path):
    run = tmp_path / "partial"
    shutil.copytree(distilled_run, run)
    (run / "summary.json").unlink()
    (run / "steps.csv").unlink()
    shutil.rmtree(run / "checkpoints")
    report = build_report(run)
    notes = [b.text for s in report.sections for b in s.blocks if b.kind == "note"]
    assert any("the run did not finish" in n for n in notes)
    assert any("steps.csv is missing" in n for n in notes)
    assert any("the student cannot be loaded" in n for n in notes)
    page = render_html(report)
    assert page.count("<img") == 1  # only the validation curves are left


def test_deleted_validation_split_and_broken_teacher(distilled_run, tmp_path):
    run = tmp_path / "moved"
    shutil.copytree(distilled_run, run)
    cfg = (run / "config.yaml").read_text()
    val = re.search(r"^  val: (.+)$", cfg, re.M).group(1)
    cfg = cfg.replace(f"val: {val}", f"val: {tmp_path / 'gone'}").replace(
        "name: depth_t\n  source: checkpoint\n  path: ", f"name: depth_t\n  source: checkpoint\n  path: {tmp_path}/x")
    (run / "config.yaml").write_text(cfg)
    notes = [b.text for s in build_report(run).sections for b in s.blocks if b.kind == "note"]
    assert any("does not exist any more" in n and "--data" in n for n in notes)
    # with --data the grid comes back; the teacher whose checkpoint is gone is named in a note
    report = build_report(run, data=val)
    notes = [b.text for s in report.sections for b in s.blocks if b.kind == "note"]
    assert any("teacher 'depth_t' is not drawn" in n for n in notes)
    assert render_html(report).count("<img") == 5
    # a run without data.val: no grid, and the page says how to get one
    (run / "config.yaml").write_text(cfg.replace(f"val: {tmp_path / 'gone'}", "val: null"))
    notes = [b.text for s in build_report(run).sections for b in s.blocks if b.kind == "note"]
    assert any("no validation split (data.val) is known; pass --data FOLDER" in n for n in notes)


def test_sample_grid_marks_missing_labels_and_enlarges_boxes(tmp_path):
    import numpy as np
    import torch

    from polydistill.data import FolderDataset
    from polydistill.evaluation.evaluate import student_predictor
    from polydistill.reporting.figures import _no_label_panel, samples_figure
    from polydistill.students import build_student
    from tests.conftest import write_tiny_dataset

    folder = write_tiny_dataset(tmp_path / "d", 3, seed=0, labels=[("depth", "boxes"), ("boxes",), ()])
    spec = {"tasks": {"depth": {}, "detection": {"num_classes": 1, "class_names": ["box"], "source_ids": [2]}},
            "backbone": "test_efficientnet", "neck_channels": 16}
    torch.manual_seed(0)
    model, tasks = build_student(spec)
    model.heads["detection"].classes.bias.data.fill_(2.0)  # scores above the drawing threshold
    data = FolderDataset(folder, ("depth", "detection"), image_size=(32, 48))
    fig = samples_figure(data, {"student": (student_predictor(model.eval(), tasks), tasks)}, count=3)
    titles = [ax.get_title() for ax in fig.axes[:5]]
    assert titles == ["input", "GT depth", "student depth", "GT detection", "student detection"]
    pics = [[np.asarray(ax.get_images()[0].get_array()) for ax in fig.axes[5 * r:5 * r + 5]] for r in range(3)]
    no_label = _no_label_panel((32, 48))
    assert not np.array_equal(pics[0][1], no_label)  # image 0 has depth
    assert np.array_equal(pics[1][1], no_label) and np.array_equal(pics[2][1], no_label)
    assert np.array_equal(pics[2][3], no_label)  # image 2 has no boxes file either
    # boxes are drawn on the image enlarged 4× (48 pixels wide): the ground truth's box and the student's
    # predicted boxes change the bare enlarged picture
    for row, col in ((0, 3), (1, 3), (2, 4)):
        bare = torch.nn.functional.interpolate(data[row]["image"][None], scale_factor=4, mode="bilinear")[0]
        bare = (bare.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert pics[row][col].shape == (128, 192, 3)
        assert (pics[row][col] != bare).any(axis=-1).mean() > 0.01


def test_not_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="neither a training run"):
        build_report(tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        write_html_report(tmp_path / "missing")


# ------------------------------------------------------------------------------------------ browser


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """Headless Chromium driven over the DevTools protocol: one page, every event kept."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", "--remote-debugging-port=0"]

    def __init__(self, executable: str, profile: Path):
        import websocket

        self.proc = subprocess.Popen([executable, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not open its DevTools port (exit code {self.proc.poll()})")
            time.sleep(0.05)
        port, path = port_file.read_text().split()
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=60, suppress_origin=True)
        self.events: list[dict] = []
        self._id = 0
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=True)

    def send(self, method: str, session: bool = False, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def open(self, url: str, width: int = 1280, timeout: float = 60) -> None:
        """Navigate and wait until the page (with all its images) has loaded: ``readyState`` is ``complete``
        at ``url`` (polled, so a load event of the previous blank page cannot be mistaken for it)."""
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=width, height=900,
                  deviceScaleFactor=1, mobile=False)
        self.send("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + timeout
        while self.evaluate("[document.readyState, location.href]") != ["complete", url]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading within {timeout} s")
            time.sleep(0.05)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"]["value"]

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, failed loads and requests that left the file."""
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert", "warning"):
                out.append(f"console {p['type']}: {[a.get('value', a.get('description')) for a in p['args']]}")
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry']['text']}")
            elif method == "Network.loadingFailed":
                out.append(f"failed load: {p.get('errorText')} ({p.get('type')})")
            elif method == "Network.requestWillBeSent" and p["request"]["url"].split(":", 1)[0] not in ("file",
                                                                                                     "data"):
                out.append(f"request outside the file: {p['request']['url'][:80]}")
        return out

    def screenshot(self, path: Path) -> None:
        """The whole page, not only the viewport."""
        size = self.send("Page.getLayoutMetrics", session=True)["cssContentSize"]
        shot = self.send("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.send("Browser.close")
        except Exception:  # noqa: BLE001 - the browser may already be gone; the process is stopped below
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


CHECK_PAGE = """(() => ({
  title: document.title,
  headings: [...document.querySelectorAll('h2')].map(h => h.textContent.trim()),
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
  overflowX: document.documentElement.scrollWidth > window.innerWidth,
}))()"""


@pytest.fixture
def browser(tmp_path):
    executable = _chromium()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the browser check needs it")
    b = Browser(executable, tmp_path / "profile")
    yield b
    b.close()


def test_report_renders_in_chromium(distilled_run, browser, tmp_path):
    page = tmp_path / "report.html"
    write_html_report(distilled_run, page)
    browser.open(page.as_uri())
    state = browser.evaluate(CHECK_PAGE)
    assert browser.problems() == []
    assert state["headings"] == TRAIN_SECTIONS
    assert state["title"].startswith("polydistill training report")
    assert len(state["images"]) == 5
    broken = [i for i in state["images"] if not (i["complete"] and i["width"] > 0)]
    assert broken == []
    assert not state["overflowX"]  # nothing wider than a 1280-pixel window (wide tables scroll in place)
    shot = tmp_path / "report.png"
    browser.screenshot(shot)
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 50_000
    keep = artifacts_dir()
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, keep / "report.png")
    shutil.copyfile(page, keep / "report.html")


def test_browser_check_catches_broken_pages(browser, tmp_path):
    """The checks above can fail: a broken image, a script error and an external request are all seen."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><h2>x</h2><img src="data:image/png;base64,AAAA">'
                    '<img src="missing.png"><script>console.error("boom"); undefined_call();</script>'
                    '<link rel="stylesheet" href="http://127.0.0.1:9/x.css"></body></html>')
    browser.open(page.as_uri())
    state = browser.evaluate(CHECK_PAGE)
    assert [i["width"] for i in state["images"]] == [0, 0]
    problems = "\n".join(browser.problems())
    assert "console error" in problems and "exception" in problems
    assert "failed load" in problems and "request outside the file: http://127.0.0.1:9/x.css" in problems


if __name__ == "__main__":  # render any report to a screenshot: python tests/test_html_report.py page.html out.png
    b = Browser(_chromium() or sys.exit("no chromium"), Path(sys.argv[2]).with_suffix(".profile"))
    try:
        b.open(Path(sys.argv[1]).resolve().as_uri())
        print(json.dumps(b.evaluate(CHECK_PAGE), indent=1), b.problems())
        b.screenshot(Path(sys.argv[2]))
    finally:
        b.close()
