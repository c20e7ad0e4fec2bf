"""``polydistill data check``: counts, class histograms, size mismatches and unreadable files, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from polydistill.cli import app
from polydistill.data.check import check_dataset
from tests.conftest import write_tiny_dataset
from tests.dataset_fixtures import CS_H, CS_IDS, CS_W, cityscapes_file, write_cityscapes, write_coco

runner = CliRunner()


def run_check(*args):
    result = runner.invoke(app, ["data", "check", *[str(a) for a in args], "--no-progress"])
    return result, " ".join(result.output.split())


def test_folder_dataset_with_a_corrupt_image_and_a_misfit_label(tmp_path):
    root = write_tiny_dataset(tmp_path / "ds", 5, seed=0, labels=[("depth", "semseg")] * 3 + [("depth",), ()])
    (root / "images/0001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt
    Image.fromarray(np.zeros((20, 48), np.uint8)).save(root / "semseg/0002.png")  # 20 rows, image has 32
    (root / "depth/9999.png").write_bytes(b"")  # matches no image
    report_path = tmp_path / "report.json"
    result, text = run_check(root, "--json", report_path)
    assert result.exit_code == 1, text
    assert "images/0001.png" in text and "0002.png is 20x48 but" in text and "9999.png" in text
    assert "3 problem(s) found" in text
    (report,) = json.loads(report_path.read_text())
    assert report["format"] == "folder" and report["images"] == 5 and report["checked"] == 5
    assert report["labels"] == {"depth": 4, "semseg": 3, "detection": 0}
    assert [u["file"] for u in report["unreadable"]] == [str(root / "images/0001.png")]
    assert [(m["task"], m["label_size"], m["image_size"]) for m in report["size_mismatches"]] == [
        ("semseg", [20, 48], [32, 48])]
    assert report["problems"] == 3 and not report["ok"]
    # the histogram counts every readable semseg label: 0000, 0001 (its label is fine), 0002 (20x48, all floor)
    expected = np.zeros(3, np.int64)
    for sid in ("0000", "0001", "0002"):
        expected += np.bincount(np.asarray(Image.open(root / f"semseg/{sid}.png")).ravel(), minlength=3)[:3]
    assert report["histogram"]["semseg"] == dict(zip(["floor", "wall", "box"], expected.tolist()))
    assert 0 < report["depth"]["min_m"] <= report["depth"]["max_m"] and report["depth"]["valid_fraction"] == 1.0


def test_clean_cityscapes_passes_and_counts_every_split(tmp_path):
    root = write_cityscapes(tmp_path / "cs")
    result, text = run_check(root, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, text
    assert "no problems found" in text and "split train" in text and "split val" in text
    reports = {r["split"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert reports["train"]["images"] == 3 and reports["val"]["images"] == 2
    assert reports["train"]["labels"] == {"depth": 3, "semseg": 3}
    hist = reports["train"]["histogram"]["semseg"]
    # per image: one row each of road, car, bicycle (16 px), void row 2 ignored, 4 rows building
    assert (hist["road"], hist["car"], hist["bicycle"], hist["building"]) == (3 * CS_W, 3 * CS_W, 3 * CS_W,
                                                                                3 * (CS_H - 4) * CS_W)
    assert hist["sky"] == 0 and sum(hist.values()) == 3 * (CS_H - 1) * CS_W
    assert reports["train"]["depth"]["valid_fraction"] == pytest.approx((CS_H * CS_W - 2) / (CS_H * CS_W))


def test_problems_are_all_listed_not_just_the_first(tmp_path):
    root = write_cityscapes(tmp_path / "cs", splits=("train",))
    first, second, third = CS_IDS["train"]
    cityscapes_file(root, "train", first, "camera").unlink()
    Image.fromarray(np.full((CS_H, CS_W), 99, np.uint8)).save(cityscapes_file(root, "train", second, "gtFine"))
    cityscapes_file(root, "train", third, "leftImg8bit").write_bytes(b"not an image")
    reports = check_dataset(root, splits=["train"])
    (report,) = reports
    assert len(report.listing) == 1 and "has no camera file" in report.listing[0]["problem"]
    files = [u["file"] for u in report.unreadable]
    assert str(cityscapes_file(root, "train", second, "gtFine")) in files
    assert str(cityscapes_file(root, "train", third, "leftImg8bit")) in files
    assert report.labels == {"depth": 2, "semseg": 3} and report.problem_count == 3
    result, text = run_check(root, "--split", "train")
    assert result.exit_code == 1 and "3 problem(s) found" in text


def test_coco_box_histogram_and_limit(tmp_path):
    root = write_coco(tmp_path / "coco")
    (report,) = check_dataset(root)
    assert report.split == "val2017" and report.labels == {"detection": 2, "semseg": 1}
    assert report.histogram["detection"] == {"person": 1, "car": 1, "dog": 1}  # the crowd person is skipped
    assert report.histogram["semseg"]["car"] == 23 * 16 and report.histogram["semseg"]["wall-other-merged"] == 23 * 16
    (limited,) = check_dataset(root, limit=1)
    assert limited.checked == 1 and limited.histogram["detection"] == {"person": 1, "car": 1, "dog": 0}
    result, text = run_check(root, "--option", "crowd=keep", "--limit", "1")
    assert result.exit_code == 0 and "1 checked" in text


def test_unopenable_dataset_exits_2(tmp_path):
    result, text = run_check(tmp_path / "nowhere")
    assert result.exit_code == 2 and "does not exist" in text and "Traceback" not in result.output
    (tmp_path / "empty").mkdir()
    result, text = run_check(tmp_path / "empty")
    assert result.exit_code == 2 and "looked for" in text
    result, text = run_check(tmp_path / "empty", "--option", "nonsense")
    assert result.exit_code == 2 and "KEY=VALUE" in text
