"""The teacher-output cache in training: built once, reused, rebuilt when anything it depends on changes,
refused when damaged, and aligned with the image under augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from polydistill.cache import CacheCorrupt, CacheError, TeacherCache, open_or_build_cache
from polydistill.cli import app
from polydistill.config import AugmentConfig, load_config
from polydistill.data import FolderDataset, build_train_transform
from polydistill.distill.weighting.feedback import FeedbackWeighting
from polydistill.pipeline.train import train_run
from polydistill.teachers import CheckpointTeacher
from tests.conftest import tiny_config, write_tiny_dataset


def build(teachers, data, root, **kw):
    logs = []
    cache = open_or_build_cache(teachers, data, root, progress=False, log=logs.append, **kw)
    return cache, logs


def test_cache_is_reused_and_rebuilt_when_weights_preprocessing_or_data_change(tiny_data, teacher_runs, tmp_path):
    data = FolderDataset(tiny_data["val"], ("depth", "semseg"), image_size=(32, 48))
    depth = CheckpointTeacher("t", teacher_runs["depth"])
    first, logs = build([depth], data, tmp_path)
    assert len(logs) == 1 and "building" in logs[0]
    again, logs = build([depth], data, tmp_path)
    assert logs == [] and again.root == first.root  # served from the cache
    online = depth.predict(data[3]["image"][None])["depth"][0]
    torch.testing.assert_close(again(3)["t"]["depth"], online, atol=1e-2, rtol=1e-3)

    with torch.no_grad():  # changed weights: rebuilt in place, never the stale maps
        next(depth.parameters()).add_(1.0)
    with pytest.raises(CacheError, match="rebuilding is off"):
        build([depth], data, tmp_path, rebuild=False)
    _, logs = build([depth], data, tmp_path)
    assert "teachers" in logs[0] and "rebuilding" in logs[0]

    resized = FolderDataset(tiny_data["val"], ("depth", "semseg"), image_size=(32, 40))  # other preprocessing
    _, logs = build([depth], resized, tmp_path)
    assert "data" in logs[0] and "rebuilding" in logs[0]

    other = CheckpointTeacher("s", teacher_runs["semseg"])  # another teacher set: its own folder
    cache, logs = build([depth, other], data, tmp_path)
    assert "building" in logs[0] and cache.root != first.root and set(cache.teachers) == {"t", "s"}


def test_changed_images_invalidate_the_cache(teacher_runs, tmp_path):
    folder = write_tiny_dataset(tmp_path / "data", 6, seed=4)
    depth = CheckpointTeacher("t", teacher_runs["depth"])
    build([depth], FolderDataset(folder, ("depth",)), tmp_path / "cache")
    write_tiny_dataset(tmp_path / "data", 7, seed=5)  # files rewritten and one added
    _, logs = build([depth], FolderDataset(folder, ("depth",)), tmp_path / "cache")
    assert "rebuilding" in logs[0]


def test_a_damaged_shard_is_an_error_naming_it(tiny_data, teacher_runs, tmp_path):
    data = FolderDataset(tiny_data["val"], ("depth",), image_size=(32, 48))
    depth = CheckpointTeacher("t", teacher_runs["depth"])
    cache, _ = build([depth], data, tmp_path)
    shard = next(cache.root.rglob("00000.npy"))
    blob = bytearray(shard.read_bytes())
    blob[-5] ^= 0xFF  # same size, one byte flipped
    shard.write_bytes(bytes(blob))
    with pytest.raises(CacheCorrupt, match=f"corrupted.*{shard.name}|{shard.name}.*corrupted"):
        build([depth], data, tmp_path)
    shard.write_bytes(bytes(blob[:-100]))
    with pytest.raises(CacheCorrupt, match="truncated"):
        build([depth], data, tmp_path, verify="size")


def test_cached_maps_follow_the_augmentation_of_the_image(tiny_data, teacher_runs, tmp_path):
    """Cached targets equal the teacher's output on the un-augmented image moved by the same flip/zoom-crop
    (the online path's geometry); photometric changes never touch them."""
    depth = CheckpointTeacher("t", teacher_runs["depth"])
    feat = CheckpointTeacher("f", teacher_runs["semseg"], tasks=["feat"], options={"features": {"feat": "neck"},
                                                                                    "grid_stride": 8})
    plain = FolderDataset(tiny_data["val"], ("depth",), image_size=(32, 48))
    cache, _ = build([depth, feat], plain, tmp_path)
    transform = build_train_transform(AugmentConfig(hflip=0.5, scale=(1.0, 1.5)))
    augmented = FolderDataset(tiny_data["val"], ("depth",), image_size=(32, 48), transform=transform, seed=7)
    augmented.attach_teacher_outputs(cache, keep_grid=["feat"])
    reference = FolderDataset(tiny_data["val"], ("depth",), image_size=(32, 48), transform=transform, seed=7)
    for index in range(len(plain)):
        image = plain[index]["image"][None]
        online = {"t": {"depth": depth.predict(image)["depth"][0]}, "f": {"feat": feat.predict(image)["feat"][0]}}
        reference.attach_teacher_outputs(lambda i, o=online: o, keep_grid=["feat"])
        got, want = augmented[index], reference[index]
        assert torch.equal(got["image"], want["image"])
        torch.testing.assert_close(got["teacher"]["t"]["depth"], want["teacher"]["t"]["depth"], atol=2e-2, rtol=2e-3)
        torch.testing.assert_close(got["teacher"]["f"]["feat"], want["teacher"]["f"]["feat"], atol=2e-2, rtol=2e-3)


@pytest.mark.parametrize("encoding,topk", [("int8", 2), ("fp16", None)])
def test_training_builds_then_reuses_the_cache(tiny_data, teacher_runs, tmp_path, encoding, topk):
    cfg = tiny_config(tiny_data["train"], None, max_steps=2)
    cfg["teachers"] = [{"name": "d", "path": str(teacher_runs["depth"])},
                       {"name": "s", "path": str(teacher_runs["semseg"])}]
    cfg["distill"] = {"teacher_cache": str(tmp_path / "cache"), "cache": {"encoding": encoding, "semseg_topk": topk}}
    train_run(load_config(base=cfg), tmp_path / "a")
    (folder,) = (tmp_path / "cache").iterdir()
    manifest = (folder / "manifest.json").stat().st_mtime_ns
    train_run(load_config(base=cfg), tmp_path / "b")
    assert (folder / "manifest.json").stat().st_mtime_ns == manifest  # reused, not rebuilt
    kinds = {t: v for t, v in json.loads((folder / "manifest.json").read_text())["outputs"].items()}
    assert kinds["s"]["semseg"]["encoding"]["kind"] == ("topk" if topk else "fp16")
    assert kinds["d"]["depth"]["encoding"]["kind"] == "fp16"  # depth always fp16


def test_feedback_weighting_scores_cached_teachers_without_running_them(tiny_data, teacher_runs, tmp_path,
                                                                        monkeypatch):
    cfg = tiny_config(tiny_data["train"], tiny_data["val"], max_steps=2)
    cfg["teachers"] = [{"name": "d", "path": str(teacher_runs["depth"])},
                       {"name": "s", "path": str(teacher_runs["semseg"])}]
    cfg["distill"] = {"teacher_cache": str(tmp_path / "cache"), "teacher_weighting": "feedback"}
    seen: list[dict] = []
    monkeypatch.setattr(FeedbackWeighting, "set_teacher_metrics", lambda self, metrics: seen.append(metrics))
    online = {**cfg, "distill": {**cfg["distill"], "precompute_teachers": False}}
    train_run(load_config(base=online), tmp_path / "online")  # the teachers run on the validation images
    train_run(load_config(base=cfg), tmp_path / "a")  # builds the training and the validation caches
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()) == ["train", "val"]

    def no_teacher(*args, **kwargs):
        raise AssertionError("a teacher ran although its outputs are cached")

    monkeypatch.setattr(CheckpointTeacher, "_predict", no_teacher)
    train_run(load_config(base=cfg), tmp_path / "b")
    want, _, got = seen
    assert set(got) == {"d", "s"}
    assert got["d"]["depth"]["abs_rel"] == pytest.approx(want["d"]["depth"]["abs_rel"], rel=2e-3)  # fp16 cache
    assert got["s"]["semseg"]["miou"] == pytest.approx(want["s"]["semseg"]["miou"], abs=2e-3)  # fp16 ties


def test_cache_command(tiny_data, teacher_runs, tmp_path):
    cfg = tiny_config(tiny_data["train"], None)
    cfg["teachers"] = [{"name": "d", "path": str(teacher_runs["depth"])}]
    path = tmp_path / "cfg.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["cache", str(path), "--out", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "d/depth: fp16" in result.output and "KiB per image" in result.output and "built in" in result.output
    cache = TeacherCache.open(next((tmp_path / "cache").iterdir()))
    assert len(cache) == 24 and np.isfinite(cache(0)["d"]["depth"].numpy()).all()
    again = CliRunner().invoke(app, ["cache", str(path), "--out", str(tmp_path / "cache"), "--no-rebuild"])
    assert again.exit_code == 0, again.output
    missing = CliRunner().invoke(app, ["cache", str(path)])
    assert missing.exit_code == 2 and "teacher_cache" in missing.output


def test_photometric_jitter_reaches_the_student_only(tiny_data, teacher_runs, tmp_path):
    transform = build_train_transform(AugmentConfig(hflip=0.5, scale=(1.0, 1.3), color_jitter=0.4))
    data = FolderDataset(tiny_data["val"], ("depth",), image_size=(32, 48), transform=transform, seed=3)
    plain = FolderDataset(tiny_data["val"], ("depth",), image_size=(32, 48),
                          transform=build_train_transform(AugmentConfig(hflip=0.5, scale=(1.0, 1.3))), seed=3)
    sample, geometric = data[2], plain[2]
    assert torch.equal(sample["teacher_image"], geometric["image"])  # same geometry, no colour change
    assert not torch.allclose(sample["image"], geometric["image"])
    cfg = tiny_config(tiny_data["train"], None, max_steps=2)
    cfg["data"]["augment"] = {"color_jitter": 0.3}
    cfg["teachers"] = [{"name": "d", "path": str(teacher_runs["depth"])}]
    cfg["distill"] = {"precompute_teachers": False}
    train_run(load_config(base=cfg), tmp_path / "online")  # online teachers read batch["teacher_image"]
