"""Surface normals: metrics by hand, label files, flips, and a student distilled from a normals teacher."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import polydistill
from polydistill.data import FolderDataset
from polydistill.data.shapescenes import decode_normals, generate_split
from polydistill.data.transforms import Compose, RandomHorizontalFlip, Resize
from polydistill.errors import DataError
from polydistill.tasks import build_task
from polydistill.tasks.normals import read_normals

S = math.sqrt(0.5)


def field(*vectors) -> torch.Tensor:
    """Vectors as one row of pixels: ``(1, 3, 1, N)``."""
    return torch.tensor(vectors, dtype=torch.float32).T[None, :, None, :]


def test_metrics_and_loss_by_hand():
    """Angles 0°, 45°, 90° on three labelled pixels, a fourth without a label (zero vector) ignored:
    mean 45°, median 45°, one pixel in three within 11.25°/22.5°/30°; loss mean(1 - cos) = (0 + 1 - √½ + 1) / 3."""
    task = build_task("normals")
    target = field((0, 0, -1), (0, -1, 0), (1, 0, 0), (0, 0, 0))
    pred = field((0, 0, -3), (0, -S, -S), (0, 0, -1), (1, 0, 0))  # any length: predict() normalises
    metric = task.new_metric()
    metric.update(task.predict(pred), target)
    got = metric.compute()
    assert got["mean_angle"] == pytest.approx(45.0, abs=1e-4)
    assert got["median_angle"] == pytest.approx(45.0, abs=0.01)  # histogram bins of 0.01°
    for key in ("within_11_25", "within_22_5", "within_30"):
        assert got[key] == pytest.approx(1 / 3)
    loss = task.supervised_loss(pred, target)
    assert loss.shape == (1,) and float(loss) == pytest.approx((1 - S + 1) / 3, abs=1e-6)
    assert float(task.distill_loss(pred, target)) == pytest.approx(float(loss))


def test_metric_states_add_up_across_splits_of_a_batch():
    """Two halves accumulated separately and summed (what processes do) give the whole's metrics."""
    task = build_task("normals")
    g = torch.Generator().manual_seed(0)
    target, pred = torch.randn(2, 3, 5, 7, generator=g), torch.randn(2, 3, 5, 7, generator=g)
    whole, a, b = task.new_metric(), task.new_metric(), task.new_metric()
    whole.update(task.predict(pred), task.predict(target))
    a.update(task.predict(pred[:1]), task.predict(target[:1]))
    b.update(task.predict(pred[1:]), task.predict(target[1:]))
    summed = {k: a.state()[k] + b.state()[k] for k in a.state()}
    merged = task.new_metric()
    merged.load_state(summed)
    assert merged.compute() == pytest.approx(whole.compute())


def test_label_files_png_and_npy(tmp_path):
    normals = np.zeros((2, 3, 3), np.float32)
    normals[0, 0] = (0, 0, -1)
    normals[0, 1] = (S, 0, -S)
    normals[1, 2] = (0, -1, 0)  # the rest: no measurement
    np.save(tmp_path / "a.npy", normals)
    got = read_normals(tmp_path / "a.npy")
    assert got.shape == (3, 2, 3)
    torch.testing.assert_close(got.permute(1, 2, 0), torch.from_numpy(normals), atol=1e-6, rtol=0)
    rgb = np.where(np.linalg.norm(normals, axis=-1, keepdims=True) > 0, np.rint((normals + 1) / 2 * 255), 0)
    Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "a.png")
    png = read_normals(tmp_path / "a.png")
    assert (png.norm(dim=0)[normals.any(-1)] - 1).abs().max() < 1e-5  # unit again after 8-bit rounding
    assert (png.permute(1, 2, 0) - torch.from_numpy(normals)).abs().max() < 1 / 127
    assert not png[:, 1, 0].any()  # black: no measurement
    Image.fromarray(np.zeros((2, 3), np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(DataError, match="8-bit RGB"):
        read_normals(tmp_path / "grey.png")
    np.save(tmp_path / "flat.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(DataError, match=r"\(H, W, 3\)"):
        read_normals(tmp_path / "flat.npy")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("normals_scenes")
    return {"train": generate_split(root / "train", 12, seed=3, height=32, width=48,
                                    labels=("depth", "semseg", "normals")),
            "val": generate_split(root / "val", 4, seed=4, height=32, width=48, labels=("depth", "normals"))}


def test_folder_layout_reads_shapescenes_normals(scenes):
    data = FolderDataset(scenes["train"], ("normals",))
    sample = data[0]
    n = sample["targets"]["normals"]
    assert sample["valid"]["normals"] and n.shape == (3, 32, 48)
    stored = decode_normals(np.asarray(Image.open(scenes["train"] / "normals" / f"{data.ids[0]}.png")))[0]
    torch.testing.assert_close(n.permute(1, 2, 0), torch.from_numpy(stored).float(), atol=1 / 127, rtol=0)
    assert FolderDataset(scenes["train"]).tasks == ("depth", "normals", "semseg")  # what the folder has


def test_a_flip_mirrors_the_map_and_negates_x(scenes):
    plain = FolderDataset(scenes["train"], ("normals", "depth"))[1]
    flipped = FolderDataset(scenes["train"], ("normals", "depth"), transform=Compose([RandomHorizontalFlip(1.0)]))[1]
    n, f = plain["targets"]["normals"], flipped["targets"]["normals"]
    torch.testing.assert_close(f[0], -n[0].flip(-1))
    torch.testing.assert_close(f[1:], n[1:].flip(-1))
    torch.testing.assert_close(flipped["targets"]["depth"], plain["targets"]["depth"].flip(-1))
    resized = Resize((16, 24))(plain)["targets"]["normals"]  # nearest: every vector stays a unit vector
    assert ((resized.norm(dim=0) - 1).abs() < 1e-5).all()


class LookUp(nn.Module):
    """A 'normals model': everything faces the camera, tilted left on the left half of the image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        out = torch.zeros(b, 3, h, w)
        out[:, 2] = -1.0
        out[:, 0, :, : w // 2] = -0.5
        return out


def test_a_student_learns_normals_from_labels_and_a_teacher(scenes, tmp_path):
    cfg = {
        "data": {"train": str(scenes["train"]), "val": str(scenes["val"]), "height": 32, "width": 48,
                 "batch_size": 4, "augment": {"hflip": 0.5}},
        "tasks": {"depth": {}, "normals": {}},
        "student": {"backbone": "test_efficientnet", "neck_channels": 16},
        "train": {"max_steps": 6, "lr": 3e-3, "warmup_steps": 2, "val_every": 3, "progress": False,
                  "report": False},
        "distill": {"teacher_cache": str(tmp_path / "cache")},
    }
    teacher = polydistill.Teacher.from_module(LookUp(), name="tilt", tasks=["normals"])
    run = polydistill.train(cfg, tmp_path / "run", teachers=[teacher])
    header = (run.run_dir / "steps.csv").read_text().splitlines()[0].split(",")
    assert {"loss/normals/gt", "loss/normals/tilt"} <= set(header)
    metrics = run.fit.last_metrics["normals"]
    assert 0.0 <= metrics["mean_angle"] <= 180.0 and 0.0 <= metrics["within_30"] <= 1.0
    student = polydistill.load_student(run.run_dir)
    out = student.predict(np.zeros((20, 30, 3), np.uint8))["normals"]
    assert out.shape == (20, 30, 3) and np.allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-4)
    exported = polydistill.export(run.run_dir, tmp_path / "student.onnx")
    assert exported.ok
