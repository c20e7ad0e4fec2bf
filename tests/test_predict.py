"""``polydistill predict`` with a checkpoint or an exported ONNX model, on images, folders, globs, the scikit-image
sample photos and a generated video; unreadable inputs are errors (named) or counted skips (found)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from polydistill.cli import app
from polydistill.deploy.export import export_checkpoint
from polydistill.deploy.predict import collect_inputs, predict
from polydistill.errors import DataError
from tests.conftest import write_tiny_dataset
from tests.test_export import make_student

cv2 = pytest.importorskip("cv2")
runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict_model")
    data = write_tiny_dataset(root / "data", 3, seed=7)
    ckpt = make_student(root / "ckpt")
    result = export_checkpoint(ckpt, root / "student.onnx", images=[data])
    assert result.ok
    return {"ckpt": ckpt, "onnx": result.onnx, "data": data}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three scikit-image sample photos (bundled in the wheel, no download), shrunk to keep the test fast."""
    data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea"):
        image = Image.fromarray(getattr(data, name)())
        image.thumbnail((160, 160))
        image.save(folder / f"{name}.jpg" if name == "coffee" else folder / f"{name}.png")
    return folder


def test_checkpoint_and_onnx_give_the_same_outputs(model, tmp_path):
    images = [model["data"] / "images" / "0000.png", model["data"] / "images" / "0001.png"]
    a = predict(model["ckpt"], images, tmp_path / "torch", progress=False)
    b = predict(model["onnx"], images, tmp_path / "onnx", progress=False)
    assert (a["backend"], b["backend"]) == ("pytorch", "onnxruntime") and a["images"] == b["images"] == 2
    for stem in ("0000", "0001"):
        for task in ("depth", "semseg", "detection"):
            x, y = (np.load(tmp_path / who / f"{stem}_{task}.npy") for who in ("torch", "onnx"))
            assert x.shape == y.shape and np.abs(x - y).max() <= 1e-4
        boxes = [json.loads((tmp_path / who / f"{stem}_detection.json").read_text())["detections"]
                 for who in ("torch", "onnx")]
        assert len(boxes[0]) == len(boxes[1]) > 0
        assert [d["class"] for d in boxes[0]] == [d["class"] for d in boxes[1]]
        assert np.allclose([d["box"] for d in boxes[0]], [d["box"] for d in boxes[1]], atol=0.11)


def test_sample_photos_give_files_a_person_can_look_at(model, photos, tmp_path):
    result = runner.invoke(app, ["predict", str(model["ckpt"]), str(photos), "--out", str(tmp_path / "out"),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3 and summary["skipped"] == [] and summary["backend"] == "pytorch"
    for name in ("astronaut", "coffee", "chelsea"):
        w, h = Image.open(photos / (f"{name}.jpg" if name == "coffee" else f"{name}.png")).size
        depth = np.array(Image.open(out / f"{name}_depth.png"))
        assert depth.dtype == np.uint16 and depth.shape == (h, w) and depth.min() > 0  # millimetres
        classes = np.array(Image.open(out / f"{name}_semseg.png"))
        assert classes.shape == (h, w) and classes.max() < 3
        for task in ("depth", "semseg", "detection"):
            picture = np.array(Image.open(out / f"{name}_{task}_vis.png"))
            assert picture.shape == (h, 2 * w, 3) and picture[:, w:].std() > 0  # image | picture, not blank
        found = json.loads((out / f"{name}_detection.json").read_text())["detections"]
        assert found and all(set(d) == {"box", "class", "score", "median_depth_m"} for d in found)
        assert all(0 <= d["box"][0] <= d["box"][2] <= w and 0 <= d["box"][1] <= d["box"][3] <= h for d in found)
        assert np.load(out / f"{name}_depth.npy").shape == (1, 32, 48)  # raw: the model's own resolution
        assert np.load(out / f"{name}_detection.npy").shape == (5, 8, 12)


def _write_video(path: Path, frames: int = 8) -> None:
    from polydistill.data.shapescenes import render_scene

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(cv2.cvtColor(render_scene(3, i, 48, 64)["image"], cv2.COLOR_RGB2BGR))
    writer.release()


def test_video_with_onnx_model(model, tmp_path):
    video = tmp_path / "clip.mp4"
    _write_video(video)
    result = runner.invoke(app, ["predict", str(model["onnx"]), str(video), "--out", str(tmp_path / "out"),
                                 "--video-frames", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "fps model only" in " ".join(result.output.split())
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    (info,) = summary["videos"]
    assert info["frames"] == 8 and info["fps_model"] > 0 and info["fps_end_to_end"] > 0
    assert info["fps_model"] >= info["fps_end_to_end"]  # the model is part of the end-to-end time
    capture = cv2.VideoCapture(info["output"])
    count, shape = 0, None
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        count, shape = count + 1, frame.shape
    capture.release()
    assert count == 8 and shape == (48, 3 * 64, 3)  # frame with boxes | depth | classes
    frames = tmp_path / "out" / "clip_frames"
    assert len(list(frames.glob("clip_*_depth.npy"))) == 8 and len(list(frames.glob("clip_*_detection.json"))) == 8
    assert not list(frames.glob("*_vis.png"))  # the pictures are in the video


def test_globs_duplicate_names_and_unreadable_files(model, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        shutil.copy(model["data"] / "images" / "0000.png", folder / "0000.png")
    (a / "broken.png").write_bytes(b"not a png at all")
    summary = predict(model["ckpt"], [Path(str(tmp_path / "*" / "*.png"))], tmp_path / "out", progress=False)
    assert summary["images"] == 2 and (tmp_path / "out" / "0000_2_depth.png").exists()  # no overwrite
    assert [s["file"] for s in summary["skipped"]] == [str(a / "broken.png")]  # found by the glob: skipped
    assert "broken.png" in summary["skipped"][0]["reason"]

    result = runner.invoke(app, ["predict", str(model["ckpt"]), str(a / "broken.png"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "broken.png" in result.output and "corrupt" in result.output  # named: an error
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="bad.mp4"):
        predict(model["onnx"], [tmp_path / "bad.mp4"], tmp_path / "y", progress=False)
    with pytest.raises(DataError, match="matches no image"):
        collect_inputs([Path(str(tmp_path / "*.jpg"))])
    with pytest.raises(DataError, match="does not exist"):
        collect_inputs([tmp_path / "nowhere.png"])
