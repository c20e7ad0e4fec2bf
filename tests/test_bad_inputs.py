"""Bad input, one case per test: each ends in a clear error (what is wrong, where, how to fix it) or in a
documented, counted behaviour — and never loses work: checkpoints and caches made before stay as they were and
the run can continue once the input is fixed.

The README table "Bad input — what you get" lists the same cases.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pathlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from polydistill.cache import CacheError, TeacherCache, open_or_build_cache
from polydistill.checkpoint import load_student_model
from polydistill.cli import app
from polydistill.config import load_config
from polydistill.data import FolderDataset, check_labels
from polydistill.data.check import check_dataset
from polydistill.engine.logging import read_steps
from polydistill.errors import ConfigError, DataError, PolydistillError, TrainingError
from polydistill.pipeline.train import train_run
from polydistill.tasks import build_task
from polydistill.teachers import TEACHER_SOURCES, CheckpointTeacher, Teacher, TeacherOutputError
from tests.conftest import tiny_config, write_tiny_dataset

runner = CliRunner()
H, W = 32, 48


# ------------------------------------------------------------------------------------------------ helpers


class ScriptedTeacher(Teacher):
    """A tiny deterministic teacher (depth from brightness, 3-class logits, a 4-channel feature map) whose
    answers a test can break per call: ``script(call, outputs) -> outputs``."""

    def __init__(self, name: str = "scripted", tasks=("depth",), *, scale: float = 1.0, script=None):
        features = {"feat": 4} if "feat" in tasks else None
        super().__init__(name, tuple(tasks), feature_channels=features)
        self.scale = torch.nn.Parameter(torch.tensor(float(scale)))
        self.script = script
        self.calls = 0
        self.freeze()

    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        grey = images.mean(1, keepdim=True) * self.scale
        out = {"depth": 1.0 + 4.0 * grey, "semseg": torch.cat([grey, 1 - grey, 0.5 * grey], 1) * 4.0,
               "feat": F.avg_pool2d(images, 8).repeat(1, 2, 1, 1)[:, :4]}
        out = {t: out[t] for t in self.tasks}
        return self.script(self.calls, out) if self.script else out


def _scripted_source(cfg, classes):
    """``source: scripted`` for run configs; ``options``: ``nan_from`` (NaN semseg logits from that call on),
    ``nan_calls`` (NaN on those calls only), ``channels_from`` (4 semseg channels from that call on)."""
    opts = dict(cfg.options)

    def script(call, out):
        nan = call >= opts.get("nan_from", math.inf) or call in opts.get("nan_calls", ())
        if nan:
            out = {t: torch.full_like(v, float("nan")) for t, v in out.items()}
        if call >= opts.get("channels_from", math.inf):
            out["semseg"] = torch.cat([out["semseg"], out["semseg"][:, :1]], 1)
        return out

    return ScriptedTeacher(cfg.name, cfg.tasks or ["semseg"], script=script)


if "scripted" not in TEACHER_SOURCES:
    TEACHER_SOURCES.register("scripted")(_scripted_source)


def run_cli(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def config(data: Path, val: Path | None = None, **train) -> dict:
    return tiny_config(data, val, **{"max_steps": 2, "val_every": None, **train})


def last_state(run: Path, name: str = "last") -> dict:
    return json.loads((run / "checkpoints" / name / "state.json").read_text())


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def build(teachers, dataset, root, **kw):
    logs: list[str] = []
    cache = open_or_build_cache(teachers, dataset, root, progress=False, log=logs.append, batch_size=4, **kw)
    return cache, logs


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A depth + semseg run of 4 steps stopped after 2 (as if interrupted), with a validation split:
    checkpoints/best and checkpoints/last."""
    base = tmp_path_factory.mktemp("trained")
    data = write_tiny_dataset(base / "train", 8, seed=11)
    val = write_tiny_dataset(base / "val", 4, seed=12)
    train_run(load_config(base=config(data, val, max_steps=4, val_every=2, save_every=1)), base / "run", stop_at_step=2)
    return {"run": base / "run", "train": data, "val": val}


# ------------------------------------------------------------------------------------------------ images


def test_truncated_image_stops_naming_the_file_and_the_run_resumes_once_fixed(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 8, seed=3)
    cfg = load_config(base=config(data, max_steps=4, save_every=2))
    run = tmp_path / "run"
    train_run(cfg, run, stop_at_step=2)  # one epoch (8 images, batches of 4), checkpoint at step 2
    saved = file_bytes(run / "checkpoints" / "last")
    image = data / "images" / "0005.png"
    good = image.read_bytes()
    image.write_bytes(good[: len(good) * 2 // 3])  # a valid PNG header, the pixel data cut off
    with pytest.raises(DataError) as info:
        train_run(cfg, run, resume=True)
    message = str(info.value)
    assert str(image) in message and "truncated" in message and "re-export or remove it" in message
    assert file_bytes(run / "checkpoints" / "last") == saved  # the last checkpoint is untouched
    image.write_bytes(good)  # fixed: the run continues where it stopped
    assert train_run(cfg, run, resume=True).fit.steps == 4
    assert [int(r["step"]) for r in read_steps(run / "steps.csv")] == [1, 2, 3, 4]


def test_zero_byte_image_is_named_and_listed_by_data_check(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 4, seed=4)
    empty = data / "images" / "0002.png"
    empty.write_bytes(b"")
    dataset = FolderDataset(data)
    assert dataset[1]["image"].shape == (3, H, W)  # the other images still load
    with pytest.raises(DataError, match=r"0002\.png is empty \(0 bytes\).*Copy the file again or remove it"):
        dataset[2]
    (report,) = check_dataset(data)
    assert [u["file"] for u in report.unreadable] == [str(empty)] and not report.ok
    code, text = run_cli("train", _write_yaml(tmp_path, config(data)), "--out", tmp_path / "run")
    assert code == 2 and "0002.png is empty" in text and "Traceback" not in text


def _write_yaml(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_grayscale_image_loads_as_three_channels(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 8, seed=5)
    grey = np.tile(np.arange(W, dtype=np.uint8)[None] * 5, (H, 1))
    Image.fromarray(grey).save(data / "images" / "0001.png")  # mode L
    wide = np.full((H, W), 3000, np.uint16)  # a 16-bit grey image: scaled by 65535, not clipped to white
    wide[:, : W // 2] = 60000
    Image.fromarray(wide).save(data / "images" / "0002.png")
    assert Image.open(data / "images" / "0002.png").mode.startswith("I")
    dataset = FolderDataset(data)
    image = dataset[1]["image"]
    assert image.shape == (3, H, W)
    torch.testing.assert_close(image, torch.from_numpy(grey / 255.0).float().expand(3, H, W))
    wide_image = dataset[2]["image"]
    assert wide_image.shape == (3, H, W)
    torch.testing.assert_close(wide_image[:, 0, -1], torch.full((3,), 3000 / 65535))
    torch.testing.assert_close(wide_image[:, 0, 0], torch.full((3,), 60000 / 65535))
    assert train_run(load_config(base=config(data)), tmp_path / "run").fit.steps == 2  # and it trains


def test_rgba_image_loads_as_rgb_with_alpha_dropped(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 8, seed=6)
    rgba = np.random.default_rng(0).integers(0, 256, (H, W, 4), dtype=np.uint8)
    rgba[: H // 2, :, 3] = 0  # fully transparent top half: its colours are kept, not blackened
    Image.fromarray(rgba).save(data / "images" / "0003.png")  # mode RGBA
    image = FolderDataset(data)[3]["image"]
    assert image.shape == (3, H, W)
    torch.testing.assert_close(image, torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float() / 255)
    assert train_run(load_config(base=config(data)), tmp_path / "run").fit.steps == 2


# ------------------------------------------------------------------------------------------------ labels


def test_depth_map_of_the_wrong_size_names_both_files_and_the_fix(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 4, seed=7)
    depth = data / "depth" / "0001.png"
    Image.fromarray(np.full((H // 2, W), 2000, np.uint16)).save(depth)
    with pytest.raises(DataError) as info:
        FolderDataset(data)[1]
    message = str(info.value)
    assert str(depth) in message and str(data / "images" / "0001.png") in message
    assert f"is {H // 2}x{W}" in message and f"is {H}x{W}" in message and f"re-export the label at {H}x{W}" in message
    (report,) = check_dataset(data)  # data check lists it with both sizes, and goes on
    assert report.size_mismatches == [{"task": "depth", "image": str(data / "images" / "0001.png"),
                                       "label": str(depth), "image_size": [H, W], "label_size": [H // 2, W]}]


def test_label_map_with_out_of_range_class_ids_names_file_ids_and_fix(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 4, seed=8)  # classes.yaml: 3 classes, ignore_index 255
    path = data / "semseg" / "0002.png"
    labels = np.array(Image.open(path))
    labels[0, :3] = (7, 254, 255)  # 255 is the ignore index, 7 and 254 are no class
    Image.fromarray(labels).save(path)
    with pytest.raises(DataError) as info:
        FolderDataset(data)[2]
    message = str(info.value)
    assert str(path) in message and "class ids 7, 254 outside 0..2" in message and "classes.yaml" in message
    assert "255" not in message.split("outside")[0]  # the ignore index is not reported as bad
    labels[0, :3] = 255
    Image.fromarray(labels).save(path)
    assert int((FolderDataset(data)[2]["targets"]["semseg"] == 255).sum()) >= 3  # ignore index: fine


def test_nan_and_inf_depth_pixels_are_no_measurement_and_counted(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 8, seed=9)
    depth = np.full((H, W), 3.0, np.float32)
    depth[0, :4] = (np.nan, np.inf, -np.inf, -1.0)  # three non-finite pixels and a negative one
    (data / "depth" / "0001.png").unlink()
    np.save(data / "depth" / "0001.npy", depth)
    (data / "depth" / "0002.png").unlink()
    np.save(data / "depth" / "0002.npy", np.full((H, W), np.nan, np.float32))  # a map of NaNs
    dataset = FolderDataset(data)
    sample = dataset[1]
    target = sample["targets"]["depth"][0]
    assert sample["valid"]["depth"] and torch.isfinite(target).all()
    assert target[0, :4].tolist() == [0.0, 0.0, 0.0, 0.0] and float(target[1, 0]) == 3.0  # 0 = no measurement
    task = build_task("depth")
    raw = torch.zeros(2, 1, H, W, requires_grad=True)
    targets = torch.stack([dataset[1]["targets"]["depth"], dataset[2]["targets"]["depth"]])
    loss = task.supervised_loss(raw, targets)
    assert torch.isfinite(loss).all() and float(loss[1].detach()) == 0.0  # nothing to measure: no loss, no NaN
    loss.sum().backward()
    assert torch.isfinite(raw.grad).all()
    (report,) = check_dataset(data)  # counted: 3 + H*W non-finite pixels in 2 files
    assert report.depth["non_finite_pixels"] == 3 + H * W and report.depth["non_finite_files"] == 2
    assert report.ok  # a documented convention, not a problem
    shown = runner.invoke(app, ["data", "check", str(data)], env={"COLUMNS": "200"})  # wide: one table row a line
    assert shown.exit_code == 0 and f"{3 + H * W} NaN/Inf pixels in 2 files (ignored as no measurement)" in shown.output
    fit = train_run(load_config(base=config(data)), tmp_path / "run").fit
    assert fit.steps == 2 and all(math.isfinite(r["loss"]) for r in read_steps(tmp_path / "run" / "steps.csv"))


# ------------------------------------------------------------------------------------------------ teachers


def test_nan_teacher_output_while_building_the_cache_names_teacher_and_image(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 8, seed=10)
    dataset = FolderDataset(data, ("depth",))
    good, _ = build([ScriptedTeacher("t")], dataset, tmp_path / "cache")
    before = file_bytes(good.root)

    def nan_on_sample_five(call, out):  # batches of 4: the second call holds images 4..7
        if call == 2:
            out["depth"][1, 0, 3, 3] = float("nan")
        return out

    broken = ScriptedTeacher("t", scale=2.0, script=nan_on_sample_five)  # other weights: a rebuild is due
    with pytest.raises(CacheError) as info:
        build([broken], dataset, tmp_path / "cache")
    message = str(info.value)
    assert "teacher 't'" in message and "'depth'" in message and "NaN or Inf" in message
    assert str(data / "images" / "0005.png") in message and "0004.png" not in message
    assert file_bytes(good.root) == before  # the earlier cache is still there, unchanged
    assert not [p for p in good.root.parent.iterdir() if p.name.startswith(".tmp-")]  # no half-built cache
    TeacherCache.open(good.root, good.fingerprint)  # and still opens


def test_nan_teacher_output_online_is_skipped_by_the_nan_loss_policy(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 8, seed=13)
    cfg = config(data, max_steps=4)
    cfg["teachers"] = [{"name": "odd", "source": "scripted", "path": "-", "tasks": ["semseg"],
                        "options": {"nan_calls": [2]}}]
    cfg["distill"] = {"precompute_teachers": False}
    result = train_run(load_config(base=cfg), tmp_path / "run")
    assert result.fit.steps == 4 and result.fit.nan_steps == 1  # skipped and counted, the run goes on
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["nan_steps"] == 1
    losses = [r.get("loss", math.nan) for r in read_steps(tmp_path / "run" / "steps.csv")]
    assert len(losses) == 4 and not math.isfinite(losses[1]) and all(math.isfinite(v) for v in losses[::2])


def test_nan_loss_skips_then_stops(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 8, seed=14)
    cfg = config(data, max_steps=8, save_every=1, nan_patience=2)
    cfg["teachers"] = [{"name": "odd", "source": "scripted", "path": "-", "tasks": ["semseg"],
                        "options": {"nan_from": 2}}]
    cfg["distill"] = {"precompute_teachers": False}
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as info:  # steps 2 and 3 are NaN: patience 2 stops at step 3
        train_run(load_config(base=cfg), run)
    message = str(info.value)
    assert "non-finite" in message and str(run / "checkpoints" / "last") in message
    train_run(load_config(base=cfg), tmp_path / "step1", stop_at_step=1)  # the same run, one good step
    good = load_file(str(tmp_path / "step1" / "checkpoints" / "last" / "model.safetensors"))
    kept = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    assert kept.keys() == good.keys()
    for key in good:  # the skipped step changed nothing: the checkpoint holds the last good weights
        torch.testing.assert_close(kept[key], good[key], rtol=0, atol=0, msg=key)


def test_teacher_output_shape_changing_between_batches_is_an_error_naming_the_teacher(tmp_path):
    images = torch.rand(2, 3, H, W)
    # another spatial size on a later call is fine for dense maps: they are resized to the input
    sizes = iter([(H, W), (H // 2, W // 2)])
    resizing = ScriptedTeacher("r", ("depth",), script=lambda call, out: {
        "depth": F.interpolate(out["depth"], size=next(sizes), mode="bilinear")})
    assert resizing.predict(images)["depth"].shape == resizing.predict(images)["depth"].shape == (2, 1, H, W)
    # other channels on a later call: an error naming the teacher, the task and both channel counts
    data = write_tiny_dataset(tmp_path / "d", 8, seed=15)
    cfg = config(data, max_steps=3, save_every=1)
    cfg["teachers"] = [{"name": "drifty", "source": "scripted", "path": "-", "tasks": ["semseg"],
                        "options": {"channels_from": 2}}]
    cfg["distill"] = {"precompute_teachers": False}
    run = tmp_path / "run"
    with pytest.raises(TeacherOutputError, match=r"teacher 'drifty' returned 'semseg' with 4 channels .* after 3"):
        train_run(load_config(base=cfg), run)
    assert last_state(run)["step"] == 1  # the step before is saved
    # a feature grid that changes for the same input size: refused too (the cache stores one shape)
    grids = iter([8, 16])
    wobbly = ScriptedTeacher("g", ("feat",), script=lambda call, out: {
        "feat": F.adaptive_avg_pool2d(out["feat"], next(grids))})
    dataset = FolderDataset(data, ("depth",))
    with pytest.raises(TeacherOutputError, match=r"teacher 'g' returned 'feat' on a 16x16 grid after 8x8"):
        build([wobbly], dataset, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# ------------------------------------------------------------------------------------------------ datasets


def test_empty_dataset_and_unlabelled_splits_are_refused_before_any_work(tmp_path):
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "images" / "scan.tif").write_bytes(b"II*\x00")
    with pytest.raises(DataError, match=r"holds no \.png/\.jpg/\.jpeg images \(it has 1 other file\(s\): scan\.tif"):
        FolderDataset(empty)
    code, text = run_cli("train", _write_yaml(tmp_path, config(empty)), "--out", tmp_path / "run0")
    assert code == 2 and str(empty / "images") in text and not (tmp_path / "run0" / "checkpoints").exists()

    unlabelled = write_tiny_dataset(tmp_path / "unlabelled", 8, seed=16, labels=())
    labelled = write_tiny_dataset(tmp_path / "labelled", 8, seed=17)
    # a validation split without any label cannot measure anything
    with pytest.raises(DataError, match=r"data\.val .*unlabelled.*none of its 8 images carries a label"):
        train_run(load_config(base=config(labelled, unlabelled)), tmp_path / "run1")
    # one task without validation labels: a warning (its metrics are NaN), not an error
    depth_only = write_tiny_dataset(tmp_path / "depth_only", 4, seed=18, labels=("depth",))
    with pytest.warns(UserWarning, match="has no 'semseg' labels"):
        check_labels(FolderDataset(depth_only), "val")
    # a training split without labels is fine when teachers teach every task...
    check_labels(FolderDataset(unlabelled), "train", taught={"depth", "semseg"})
    # ...and refused when a task has neither labels nor a teacher
    with pytest.raises(DataError, match=r"none of its 8 images carries a 'semseg' label and no teacher teaches"):
        check_labels(FolderDataset(unlabelled), "train", taught={"depth"})


def test_unlabelled_training_split_without_teachers_is_refused(tmp_path):
    unlabelled = write_tiny_dataset(tmp_path / "unlabelled", 8, seed=16, labels=())
    with pytest.raises(DataError, match=r"data\.train .*none of its 8 images carries a 'depth' label"):
        train_run(load_config(base=config(unlabelled)), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained or written


# ------------------------------------------------------------------------------------------------ config


def test_config_with_wrong_types_names_each_field_and_the_value_given(tmp_path, tiny_data):
    good = config(tiny_data["train"])
    bad = json.loads(json.dumps(good))
    bad["train"]["lr"] = "fast"
    bad["data"]["batch_size"] = 2.5
    bad["train"]["max_step"] = 3
    with pytest.raises(ConfigError) as info:
        load_config(base=bad)
    message = str(info.value)
    assert "config key 'train.lr'" in message and "valid number" in message and "(got 'fast')" in message
    assert "config key 'data.batch_size'" in message and "fractional part" in message and "(got 2.5)" in message
    assert "unknown config key 'train.max_step' — did you mean 'max_steps'?" in message
    assert "\n" not in message
    path = _write_yaml(tmp_path, good)
    for override, field in (("train.lr=fast", "train.lr"), ("data.batch_size=2.5", "data.batch_size"),
                            ("train.max_step=3", "train.max_step")):
        code, text = run_cli("train", path, override, "--out", tmp_path / "run")
        assert code == 2 and f"'{field}'" in text and "Traceback" not in text, text
    code, text = run_cli("train", _write_yaml(tmp_path, bad, "bad.yaml"), "--out", tmp_path / "run")
    assert code == 2 and "(got 'fast')" in text and "(got 2.5)" in text
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ------------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("case", ["no_checkpoint", "no_weights", "onnx_file", "torchvision_weights", "hf_folder"])
def test_missing_teacher_files_name_the_teacher_and_the_path(case, trained, tmp_path):
    data = trained["train"]
    where = tmp_path / "teacher"
    teacher = {"name": "tt", "path": str(where), "tasks": ["depth"]}
    if case == "no_weights":  # a run folder whose checkpoint lost its weights
        shutil.copytree(trained["run"] / "checkpoints", where / "checkpoints")
        for weights in where.rglob("model.safetensors"):
            weights.unlink()
    elif case == "onnx_file":
        teacher["path"] = f"onnx:{where}.onnx"
    elif case == "torchvision_weights":
        teacher.update(path="torchvision:deeplabv3_mobilenet_v3_large", tasks=["semseg"],
                       options={"weights_file": f"{where}.safetensors", "num_classes": 3})
    elif case == "hf_folder":  # save_pretrained's config.json without the weights beside it
        where.mkdir()
        hf_config = {"model_type": "dpt", "architectures": ["DPTForDepthEstimation"]}
        (where / "config.json").write_text(json.dumps(hf_config))
        teacher["path"] = f"hf:{where}"
    cfg = config(data)
    cfg["teachers"] = [teacher]
    with pytest.raises(ConfigError) as info:
        train_run(load_config(base=cfg), tmp_path / "run")
    message = str(info.value)
    assert message.startswith("teacher 'tt'") and str(where) in message, message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_disk_full_or_read_only_during_a_checkpoint_save_keeps_the_previous_one(tmp_path, monkeypatch):
    import polydistill.cache.writer as cache_writer
    import polydistill.checkpoint as checkpoint

    data = write_tiny_dataset(tmp_path / "d", 8, seed=19)
    cfg = load_config(base=config(data, max_steps=3, save_every=1))
    run = tmp_path / "run"
    real_save = checkpoint.save_file
    calls = {"n": 0}

    def full_disk_on_the_second_checkpoint(tensors, path, *args, **kwargs):
        calls["n"] += 1  # two files per checkpoint: the second checkpoint's first file fails
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full_disk_on_the_second_checkpoint)
    with pytest.raises(PolydistillError) as info:
        train_run(cfg, run)
    message = str(info.value)
    last = run / "checkpoints" / "last"
    assert f"cannot write checkpoint {last}" in message and "ENOSPC" in message and "No space left" in message
    assert "previous checkpoint there is unchanged" in message and "--resume" in message
    assert last_state(run)["step"] == 1  # the previous checkpoint, intact and readable
    assert not [p for p in last.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    monkeypatch.setattr(checkpoint, "save_file", real_save)

    # a read-only folder: the final rename fails after the old checkpoint was moved aside — it is put back
    real_rename = pathlib.Path.rename

    def read_only_publish(self, target):
        if self.name.startswith(".tmp-last"):
            raise OSError(errno.EROFS, "Read-only file system", str(target))
        return real_rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", read_only_publish)
    with pytest.raises(PolydistillError, match=r"cannot write checkpoint .*last \(EROFS: Read-only file system\)"):
        train_run(cfg, run, resume=True)
    assert last_state(run)["step"] == 1
    monkeypatch.setattr(pathlib.Path, "rename", real_rename)
    if os.geteuid() != 0:  # a real read-only folder (root writes through chmod)
        last.parent.chmod(0o555)
        try:
            with pytest.raises(PolydistillError, match="cannot write checkpoint"):
                train_run(cfg, run, resume=True)
        finally:
            last.parent.chmod(0o755)
        assert last_state(run)["step"] == 1
    assert train_run(cfg, run, resume=True).fit.steps == 3  # space again: the run continues

    # the teacher-output cache: a full disk while writing leaves the earlier cache as it was
    dataset = FolderDataset(data, ("depth",))
    cache, _ = build([ScriptedTeacher("t")], dataset, tmp_path / "cache")
    before = file_bytes(cache.root)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_writer, "write_npy", no_space)
    with pytest.raises(CacheError, match=r"cannot write the teacher cache .*No space left on device.*unchanged"):
        build([ScriptedTeacher("t", scale=3.0)], dataset, tmp_path / "cache")
    assert file_bytes(cache.root) == before
    assert not [p for p in cache.root.parent.iterdir() if p.name.startswith(".tmp-")]


def test_corrupted_checkpoint_is_named_for_resume_eval_and_as_a_teacher(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    last = run / "checkpoints" / "last"
    cfg = load_config(base=config(trained["train"], trained["val"], val_every=2, save_every=1, max_steps=4))
    steps_before = (run / "steps.csv").read_text()
    weights = last / "model.safetensors"
    weights.write_bytes(os.urandom(64))  # garbage bytes
    with pytest.raises(PolydistillError, match=rf"checkpoint file {re.escape(str(weights))} is damaged"):
        train_run(cfg, run, resume=True)
    assert (run / "steps.csv").read_text() == steps_before  # the logs were not truncated
    code, text = run_cli("eval", last, "--data", trained["val"])
    assert code == 2 and str(weights) in text and "damaged" in text
    with pytest.raises(ConfigError, match=rf"teacher 'tt': checkpoint file {re.escape(str(weights))} is damaged"):
        CheckpointTeacher("tt", last)
    load_student_model(run)  # checkpoints/best is still usable

    shutil.copy2(trained["run"] / "checkpoints" / "last" / "model.safetensors", weights)
    state = last / "state.json"
    text_state = state.read_text()
    state.write_text(text_state[: len(text_state) // 2])  # truncated JSON
    with pytest.raises(PolydistillError, match=rf"checkpoint file {re.escape(str(state))} is damaged or truncated"):
        train_run(cfg, run, resume=True)
    spec = last / "model.json"
    spec_text = spec.read_text()
    spec.write_text(spec_text[:20])
    code, text = run_cli("eval", last, "--data", trained["val"])
    assert code == 2 and str(spec) in text
    with pytest.raises(ConfigError, match=rf"teacher 'tt': checkpoint file {re.escape(str(spec))} is damaged"):
        CheckpointTeacher("tt", last)
    spec.write_text(spec_text)
    state.write_text(text_state)
    assert train_run(cfg, run, resume=True).fit.steps == 4  # repaired: the run continues


# ------------------------------------------------------------------------------------------------ cache


def test_cache_built_for_other_data_is_detected_and_rebuilt_or_refused(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 8, seed=20)
    teacher = ScriptedTeacher("t")
    root = tmp_path / "cache"
    cache, logs = build([teacher], FolderDataset(data, ("depth",), image_size=(H, W)), root)
    assert "building" in logs[0]
    manifest = (cache.root / "manifest.json").read_bytes()

    write_tiny_dataset(tmp_path / "d", 8, seed=21)  # other images under the same names
    other = FolderDataset(data, ("depth",), image_size=(H, W))
    with pytest.raises(CacheError) as info:
        build([teacher], other, root, rebuild=False)
    message = str(info.value)
    assert str(cache.root) in message and "training images changed" in message and "left as it is" in message
    assert (cache.root / "manifest.json").read_bytes() == manifest  # refused: untouched
    rebuilt, logs = build([teacher], other, root)
    assert "training images changed" in logs[0] and "rebuilding" in logs[0]
    torch.testing.assert_close(rebuilt(5)["t"]["depth"], teacher.predict(other[5]["image"][None])["depth"][0],
                               atol=1e-2, rtol=1e-3)  # the new images' outputs, not the stale ones

    resized = FolderDataset(data, ("depth",), image_size=(H, W - 8))  # another input size
    _, logs = build([teacher], resized, root)
    assert "training images changed" in logs[0] and "rebuilding" in logs[0]
    fewer = tmp_path / "fewer"
    shutil.copytree(data, fewer)
    _, logs = build([teacher], FolderDataset(fewer, ("depth",)), root)  # another folder: its own cache
    assert "building" in logs[0]
    for sub in ("images", "depth", "semseg"):  # one image (and its labels) fewer
        (fewer / sub / "0007.png").unlink()
    _, logs = build([teacher], FolderDataset(fewer, ("depth",)), root)
    assert "has 7 images, the cache 8" in logs[0]
    _, logs = build([ScriptedTeacher("t", scale=0.5)], resized, root)  # other teacher weights
    assert "teacher 't' has other weights" in logs[0]
