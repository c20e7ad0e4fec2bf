"""Teacher-output cache store: encodings round-trip within their bounds, builds are atomic and complete,
stale or damaged caches are refused with clear errors, and reads are memory-mapped and picklable."""

from __future__ import annotations

import gc
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from polydistill.cache import (
    FORMAT_VERSION,
    CacheCorrupt,
    CacheError,
    CacheMismatch,
    CacheMissing,
    CacheWriter,
    TeacherCache,
    topk_decode,
    topk_encode,
)
from polydistill.data import FolderDataset
from tests.conftest import write_tiny_dataset

FP = {"teachers": {"a": "f00d", "b": "beef"}, "dataset": "0123abcd", "resize": [16, 20]}


def build(root: Path, maps: dict[tuple[str, str], torch.Tensor], *, shard_size: int = 4, batch: int = 3,
          order: np.ndarray | None = None, encodings=None, fingerprint=FP) -> Path:
    """Write ``maps`` ({(teacher, task): (N, C, h, w)}) into a cache, ``batch`` samples per add."""
    n = len(next(iter(maps.values())))
    order = np.arange(n) if order is None else order
    with CacheWriter(root, fingerprint, n, shard_size=shard_size, encodings=encodings) as writer:
        for start in range(0, n, batch):
            idx = torch.as_tensor(order[start:start + batch])
            for (teacher, task), values in maps.items():
                writer.add(teacher, task, idx, values[idx])
    return root


def sample_maps(n: int = 10, seed: int = 0) -> dict[tuple[str, str], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        ("a", "semseg"): torch.randn(n, 3, 16, 20, generator=g) * 4,  # image-size logits
        ("a", "features"): torch.randn(n, 8, 2, 3, generator=g),  # coarse token grid
        ("b", "depth"): torch.rand(n, 1, 16, 20, generator=g) * 10,
    }


def test_fp16_round_trip_layout_and_listing(tmp_path):
    maps = sample_maps(10)
    root = build(tmp_path / "cache", maps, shard_size=4)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["fingerprint"] == FP
    assert manifest["num_samples"] == 10 and manifest["shard_size"] == 4
    entry = manifest["outputs"]["a"]["features"]
    assert entry["encoding"] == {"kind": "fp16"} and entry["shape"] == [8, 2, 3]
    assert [s["count"] for s in entry["shards"]] == [4, 4, 2]
    assert sorted(p.name for p in (root / "a" / "semseg").iterdir()) == ["00000.npy", "00001.npy", "00002.npy"]
    assert np.load(root / "a" / "semseg" / "00002.npy").shape == (2, 3, 16, 20)

    cache = TeacherCache.open(root, FP)
    assert len(cache) == 10 and cache.teachers == ("a", "b")
    assert cache.tasks == {"a": ("semseg", "features"), "b": ("depth",)}
    for i in range(10):
        got = cache(i)
        assert set(got) == {"a", "b"} and set(got["a"]) == {"semseg", "features"}
        for (teacher, task), values in maps.items():
            assert got[teacher][task].dtype == torch.float32
            assert torch.equal(got[teacher][task], values[i].half().float())
    assert torch.equal(cache(-1)["b"]["depth"], cache(9)["b"]["depth"])
    with pytest.raises(IndexError):
        cache(10)
    files = [p for p in root.rglob("*.npy")]
    assert cache.size_bytes() == sum(p.stat().st_size for p in files)
    assert cache.size_bytes("a") == sum(p.stat().st_size for p in files if p.parts[-3] == "a")
    assert cache.size_bytes("a", "semseg") == sum(p.stat().st_size for p in (root / "a" / "semseg").iterdir())


def test_out_of_order_across_shard_boundaries_keeps_one_shard_in_ram(tmp_path):
    maps = {("t", "depth"): torch.randn(11, 2, 3, 5)}
    order = np.random.default_rng(0).permutation(11)
    writer = CacheWriter(tmp_path / "cache", FP, 11, shard_size=4)
    for start in range(0, 11, 2):
        idx = torch.as_tensor(order[start:start + 2])
        writer.add("t", "depth", idx, maps["t", "depth"][idx])
        out = writer._outputs["t", "depth"]
        assert sum(not buf.spilled for buf in out.buffers.values()) <= 1
    root = writer.finish()
    assert not list(root.rglob("*partial*")) and not list(tmp_path.glob(".tmp-*"))
    cache = TeacherCache.open(root, FP)
    for i in range(11):
        assert torch.equal(cache.read("t", "depth", i), maps["t", "depth"][i].half().float())


def test_int8_error_is_within_half_a_step_per_shard_and_channel(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 4, 6, 7, generator=g)
    x[:, 1] = x[:, 1] * 100 + 1000  # wide range far from zero
    x[:, 2] = 3.25  # constant channel: exact
    x[:, 3] = x[:, 3] * 1e-3
    root = build(tmp_path / "cache", {("t", "feat"): x}, shard_size=4, encodings={("t", "feat"): "int8"})
    assert np.load(root / "t" / "feat" / "00000.npy").dtype == np.uint8
    assert np.load(root / "t" / "feat" / "00000.affine.npy").shape == (2, 4)
    cache = TeacherCache.open(root, FP)
    got = torch.stack([cache(i)["t"]["feat"] for i in range(9)])
    for start in range(0, 9, 4):
        shard = x[start:start + 4]
        half_step = (shard.amax(dim=(0, 2, 3)) - shard.amin(dim=(0, 2, 3))) / 510
        bound = half_step[None, :, None, None] * (1 + 1e-4) + 1e-6 * shard.abs()
        err = (got[start:start + 4] - shard).abs()
        assert (err <= bound).all(), (err / bound).max()
        assert err[:, 0].max() > half_step[0] / 10  # it really is quantised
    assert torch.equal(got[:, 2], x[:, 2])


def test_topk_exact_for_k_equal_to_classes():
    logits = torch.randn(2, 5, 4, 6) * 3
    top, ids = topk_encode(logits, 5)
    assert top.dtype == np.float16 and ids.dtype == np.uint8 and top.shape == (2, 5, 4, 6)
    decoded = topk_decode(top, ids, 5)
    torch.testing.assert_close(decoded, torch.log_softmax(logits, 1), rtol=1e-3, atol=1e-3)


def test_topk_keeps_argmax_and_top_probabilities(tmp_path):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 10, 8, 9, generator=g) * 3
    root = build(tmp_path / "cache", {("seg", "semseg"): logits}, encodings={("seg", "semseg"): ("topk", 3)})
    assert np.load(root / "seg" / "semseg" / "00000.ids.npy").dtype == np.uint8
    cache = TeacherCache.open(root, FP)
    got = torch.stack([cache(i)["seg"]["semseg"] for i in range(6)])
    assert got.shape == logits.shape and torch.isfinite(got).all()
    logp = torch.log_softmax(logits, 1)
    ref_top, ref_ids = logp.topk(4, dim=1)
    clear = (ref_top[:, 0] - ref_top[:, 1]) > 1e-2  # no near-tie that fp16 could flip
    assert clear.float().mean() > 0.95
    assert torch.equal(got.argmax(1)[clear], logp.argmax(1)[clear])
    torch.testing.assert_close(got.gather(1, ref_ids[:, :3]), ref_top[:, :3], rtol=1e-3, atol=1e-3)
    clear_k = (ref_top[:, 2] - ref_top[:, 3]) > 1e-2
    got_ids = got.topk(3, dim=1).indices.sort(1).values
    assert torch.equal(got_ids.permute(0, 2, 3, 1)[clear_k], ref_ids[:, :3].sort(1).values.permute(0, 2, 3, 1)[clear_k])
    torch.testing.assert_close(got.exp().sum(1), torch.ones(6, 8, 9), rtol=0, atol=2e-3)


def test_topk_many_classes_use_int16_ids():
    logits = torch.randn(1, 300, 2, 2)
    top, ids = topk_encode(logits, 2)
    assert ids.dtype == np.int16 and ids.max() < 300
    assert torch.equal(topk_decode(top, ids, 300).argmax(1), logits.argmax(1))


def test_missing_or_repeated_samples_are_errors(tmp_path):
    root = tmp_path / "cache"
    values = torch.randn(10, 1, 2, 2)
    writer = CacheWriter(root, FP, 10, shard_size=4, encodings={("t", "depth"): "fp16", ("u", "depth"): "int8"})
    keep = torch.as_tensor([i for i in range(10) if i != 5])
    writer.add("t", "depth", keep, values[keep])
    with pytest.raises(CacheError, match=r"'t' task 'depth': 1 of 10 samples .*\[5\]"):
        writer.finish()
    with pytest.raises(CacheError, match="already written"):
        writer.add("t", "depth", torch.as_tensor([1]), values[:1])
    with pytest.raises(CacheError, match="repeated"):
        writer.add("t", "depth", torch.as_tensor([5, 5]), values[:2])
    with pytest.raises(CacheError, match="outside"):
        writer.add("t", "depth", torch.as_tensor([10]), values[:1])
    with pytest.raises(CacheError, match="shape"):
        writer.add("t", "depth", torch.as_tensor([5]), torch.randn(1, 2, 2, 2))
    writer.add("t", "depth", torch.as_tensor([5]), values[5:6])
    with pytest.raises(CacheError, match="'u' task 'depth': 10 of 10 samples"):  # declared, never added
        writer.finish()
    assert not root.exists()
    writer.abort()
    assert not list(tmp_path.iterdir())


def test_non_finite_and_fp16_overflow_are_refused(tmp_path):
    writer = CacheWriter(tmp_path / "c", FP, 2)
    with pytest.raises(CacheError, match="float16's range"):
        writer.add("t", "depth", torch.as_tensor([0]), torch.full((1, 1, 2, 2), 1e6))
    with pytest.raises(CacheError, match="NaN"):
        writer.add("t", "depth", torch.as_tensor([0]), torch.full((1, 1, 2, 2), float("nan")))
    writer.abort()


def test_interrupted_build_leaves_no_cache_and_rebuild_works(tmp_path):
    root = tmp_path / "cache"
    maps = sample_maps(6)
    with pytest.raises(RuntimeError, match="teacher crashed"):
        with CacheWriter(root, FP, 6, shard_size=4) as writer:
            writer.add("a", "semseg", torch.arange(4), maps["a", "semseg"][:4])  # one shard written
            raise RuntimeError("teacher crashed")
    assert not root.exists() and not list(tmp_path.iterdir())
    # a killed process never reaches cleanup: the build folder stays, the final name stays free
    dead = CacheWriter(root, FP, 6, shard_size=4)
    dead.add("a", "semseg", torch.arange(4), maps["a", "semseg"][:4])
    assert not root.exists() and dead.build_dir.is_dir()
    with pytest.raises(CacheMissing, match="no teacher cache"):
        TeacherCache.open(root)
    build(root, maps)
    assert torch.equal(TeacherCache.open(root, FP)(5)["b"]["depth"], maps["b", "depth"][5].half().float())
    # rebuilding replaces the old cache whole
    build(root, {("b", "depth"): maps["b", "depth"] + 1})
    cache = TeacherCache.open(root, FP)
    assert cache.teachers == ("b",) and not (root / "a").exists()
    assert torch.equal(cache(0)["b"]["depth"], (maps["b", "depth"][0] + 1).half().float())


def test_writer_refuses_to_replace_a_folder_that_is_not_a_cache(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "image.png").write_bytes(b"x")
    with pytest.raises(CacheError, match="not a teacher cache"):
        CacheWriter(tmp_path / "data", FP, 3)


def test_fingerprint_mismatch_names_the_keys_that_differ(tmp_path):
    root = build(tmp_path / "cache", sample_maps(4))
    TeacherCache.open(root, {**FP, "resize": (16, 20)})  # tuples compare as their JSON lists
    with pytest.raises(CacheMismatch, match=r"differ: dataset\)") as info:
        TeacherCache.open(root, {**FP, "dataset": "ffff"})
    assert str(root) in str(info.value) and "--rebuild" in str(info.value)
    with pytest.raises(CacheMismatch, match="differ: augment, teachers"):
        TeacherCache.open(root, {**FP, "teachers": {"a": "f00d"}, "augment": False})


def test_format_version_mismatch(tmp_path):
    root = build(tmp_path / "cache", sample_maps(4))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 98
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatch, match=f"format version {FORMAT_VERSION + 98}.*reads version {FORMAT_VERSION}"):
        TeacherCache.open(root, FP)


@pytest.mark.parametrize("verify", [True, "size"])
def test_truncated_shard_is_reported(tmp_path, verify):
    root = build(tmp_path / "cache", sample_maps(6))
    shard = root / "a" / "features" / "00001.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CacheCorrupt, match="truncated") as info:
        TeacherCache.open(root, FP, verify=verify)
    assert str(shard) in str(info.value) and "--rebuild" in str(info.value)


def test_changed_byte_is_caught_by_the_checksum(tmp_path):
    root = build(tmp_path / "cache", sample_maps(6))
    shard = root / "b" / "depth" / "00000.npy"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheCorrupt, match="corrupted") as info:
        TeacherCache.open(root, FP, verify=True)
    assert str(shard) in str(info.value)
    TeacherCache.open(root, FP, verify="size")  # same size: only the checksum notices


def test_missing_shard_and_damaged_header(tmp_path):
    root = build(tmp_path / "cache", sample_maps(6))
    (root / "a" / "semseg" / "00001.npy").unlink()
    with pytest.raises(CacheCorrupt, match=r"00001\.npy' is missing"):
        TeacherCache.open(root, FP)
    cache = TeacherCache.open(root, FP, verify=False)
    cache(0)
    with pytest.raises(CacheCorrupt, match="missing"):
        cache(5)


class _Maps(Dataset):
    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.source(index)["b"]["depth"]


def test_reader_survives_pickling_and_dataloader_workers(tmp_path):
    maps = sample_maps(10)
    cache = TeacherCache.open(build(tmp_path / "cache", maps), FP)
    cache(0)  # maps shards in this process
    assert cache._open
    clone = pickle.loads(pickle.dumps(cache))
    assert not clone._open
    assert torch.equal(clone(7)["a"]["features"], maps["a", "features"][7].half().float())
    loader = DataLoader(_Maps(cache), batch_size=3, num_workers=2, shuffle=False)
    got = torch.cat(list(loader))
    assert torch.equal(got, maps["b", "depth"].half().float())


def test_folder_dataset_joins_cached_maps(tmp_path):
    data = FolderDataset(write_tiny_dataset(tmp_path / "data", 3, seed=0), ("depth",))
    maps = {("dpt", "depth"): torch.rand(3, 1, 32, 48) * 5, ("dino", "features"): torch.randn(3, 6, 2, 3)}
    fingerprint = {**FP, "dataset": data.fingerprint()}
    cache = TeacherCache.open(build(tmp_path / "cache", maps, shard_size=2, fingerprint=fingerprint), fingerprint)
    data.attach_teacher_outputs(cache, keep_grid=("features",))
    sample = data[2]
    assert torch.equal(sample["teacher"]["dpt"]["depth"], maps["dpt", "depth"][2].half().float())
    assert sample["teacher"]["dino"]["features"].shape == (6, 2, 3)


def test_reads_map_the_shard_and_copy_one_sample(tmp_path, monkeypatch):
    maps = {("t", "depth"): torch.randn(8, 2, 3, 4)}
    root = build(tmp_path / "cache", maps, encodings={("t", "depth"): "fp16"})
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    cache = TeacherCache.open(root, FP)
    value = cache(5)["t"]["depth"]
    assert calls == ["r"]
    (mm,) = cache._open["t", "depth", 1].values()
    assert isinstance(mm, np.memmap) and not np.shares_memory(value.numpy(), mm)
    cache(6)
    assert calls == ["r"]  # the open map is reused


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_reading_one_sample_of_a_large_cache_stays_small_in_memory(tmp_path):
    n, shape = 100, (4, 250, 1000)  # 2 MB per sample in fp16, one 200 MB shard
    root = tmp_path / "cache"
    with CacheWriter(root, FP, n, shard_size=n) as writer:
        for start in range(0, n, 25):
            values = torch.full((25, *shape), float(start), dtype=torch.float16)
            writer.add("t", "feat", torch.arange(start, start + 25), values)
    del values, writer
    gc.collect()
    cache = TeacherCache.open(root, FP, verify="size")
    assert cache.size_bytes() > 190e6
    before = _rss_bytes()
    value = cache(60)["t"]["feat"]
    grown = _rss_bytes() - before
    assert value.shape == shape and float(value[0, 0, 0]) == 50.0
    assert grown < 30e6, f"RSS grew by {grown / 1e6:.0f} MB reading one 2 MB sample"


def test_a_killed_build_leaves_no_folder_behind_after_the_next_build(tmp_path):
    import signal
    import subprocess

    script = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parents[1] / 'src')!r})\n"
              "from polydistill.cache import CacheWriter\n"
              f"w = CacheWriter({str(tmp_path / 'cache')!r}, {FP!r}, 11, shard_size=4)\n"
              "print('started', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (abandoned,) = tmp_path.glob(".tmp-cache-*")
    live = CacheWriter(tmp_path / "cache", FP, 11, shard_size=4)  # a build of this process, still running
    root = build(tmp_path / "cache", {("a", "depth"): torch.rand(11, 1, 4, 5)})
    assert not abandoned.exists()  # its process is dead: removed by the next build
    assert live.build_dir.exists()  # a running build is left alone
    live.abort()
    assert TeacherCache.open(root, FP).outputs and not list(tmp_path.glob(".tmp-*"))
