"""Shared fixtures: tiny folder datasets written with numpy/PIL (no generator needed) and offline env."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

CLASSES = ["floor", "wall", "box"]


def write_tiny_dataset(root: Path, count: int, *, seed: int, height: int = 32, width: int = 48,
                       labels: tuple[str, ...] | list[tuple[str, ...]] = ("depth", "semseg")) -> Path:
    """Images of a floor/wall split plus one bright box, with matching depth and class maps (and its box with
    ``"boxes"`` in ``labels``)."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "depth", "semseg", "boxes"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text("names: [floor, wall, box]\nignore_index: 255\n")
    for i in range(count):
        horizon = int(rng.integers(height // 3, 2 * height // 3))
        sem = np.zeros((height, width), np.uint8)
        sem[:horizon] = 1
        depth = np.empty((height, width), np.float32)
        depth[:horizon] = 8.0
        rows = np.arange(horizon, height, dtype=np.float32)
        depth[horizon:] = (8.0 * (horizon + 1) / (rows + 1))[:, None]
        y0, x0 = int(rng.integers(0, height - 10)), int(rng.integers(0, width - 12))
        sem[y0:y0 + 10, x0:x0 + 12] = 2
        depth[y0:y0 + 10, x0:x0 + 12] = 2.0 + float(rng.random())
        palette = np.array([[90, 90, 90], [200, 180, 150], [220, 40, 40]], np.float32)
        img = palette[sem] * (0.7 + 0.3 / depth[..., None]) + rng.normal(0, 6, (height, width, 3))
        sid = f"{i:04d}"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "images" / f"{sid}.png")
        these = labels[i] if isinstance(labels, list) else labels
        if "depth" in these:
            Image.fromarray((depth * 1000).astype(np.uint16)).save(root / "depth" / f"{sid}.png")
        if "semseg" in these:
            Image.fromarray(sem).save(root / "semseg" / f"{sid}.png")
        if "boxes" in these:  # the box's pixels, in pixel edges, class 2
            (root / "boxes" / f"{sid}.json").write_text(json.dumps({"boxes": [[x0, y0, x0 + 12, y0 + 10]],
                                                                    "labels": [2]}))
    (root / "info.json").write_text(json.dumps({"count": count}))
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tiny")
    return {
        "train": write_tiny_dataset(base / "train", 24, seed=1),
        "val": write_tiny_dataset(base / "val", 8, seed=2),
    }


def tiny_config(train: Path, val: Path | None, **train_opts) -> dict:
    """A config dict for a very small student that trains in a few seconds on 2 cores."""
    return {
        "data": {"train": str(train), "val": str(val) if val else None, "height": 32, "width": 48, "batch_size": 4},
        "tasks": {"depth": {}, "semseg": {}},
        "student": {"backbone": "test_efficientnet", "neck_channels": 16},
        "train": {"max_steps": 6, "lr": 3e-3, "warmup_steps": 2, "val_every": 3, "progress": False, "report": False,
                  **train_opts},
    }


@pytest.fixture(scope="session")
def teacher_runs(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """Tiny single-task teachers: ``depth``, ``semseg`` and a weaker ``depth_weak`` (2 steps only)."""
    from polydistill.config import load_config
    from polydistill.pipeline.train import train_run

    root = tmp_path_factory.mktemp("teachers")
    runs = {}
    for name, task, steps in (("depth", "depth", 6), ("semseg", "semseg", 6), ("depth_weak", "depth", 2)):
        cfg = tiny_config(tiny_data["train"], tiny_data["val"], max_steps=steps)
        cfg["tasks"] = {task: {}}
        cfg["student"]["backbone"] = "test_resnet"
        train_run(load_config(base=cfg), root / name)
        runs[name] = root / name
    return runs


@dataclass
class QuickDemo:
    out: Path  # the demo's output folder (metrics.json, student/, label_only/)
    env: dict[str, str]  # the environment it ran in (POLYDISTILL_CACHE: its own data and teachers)
    result: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> QuickDemo:
    """``polydistill demo --preset quick`` once per session, in its own cache: the end-to-end demo test checks
    it, and the distributed and crash tests train its student config (real teachers, cache, detection)."""
    root = tmp_path_factory.mktemp("quick_demo")
    env = {**os.environ, "POLYDISTILL_CACHE": str(root / "cache")}
    cmd = [sys.executable, "-m", "polydistill.cli", "demo", "--preset", "quick", "--out", str(root / "demo"),
           "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return QuickDemo(out=root / "demo", env=env, result=result)
