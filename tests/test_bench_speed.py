"""benchmarks.speed: the variant configs are valid and differ only where they must; the summaries add up."""

from __future__ import annotations

import math

import pytest

from benchmarks import speed as bench
from polydistill import load_config
from polydistill.demo import PRESETS, TEACHERS, DemoSetup
from polydistill.pipeline.train import check_names


def flatten(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(a: dict, b: dict) -> set[str]:
    fa, fb = flatten(a), flatten(b)
    return {k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k)}


@pytest.fixture
def setting(tmp_path):
    splits = {"pool": tmp_path / "pool", "val": tmp_path / "val"}
    teachers = {name: tmp_path / name for name in TEACHERS}
    return DemoSetup(preset_name="quick", preset=PRESETS["quick"], seed=0, splits=splits, teacher_runs=teachers)


def test_variant_configs_are_valid_and_differ_where_they_must(setting, tmp_path):
    teachers = setting.teacher_runs
    common = dict(steps=20, threads=2, cache_dir=tmp_path / "cache")
    supervised = bench.variant_config(setting, {}, **common)
    online = bench.variant_config(setting, teachers, precompute=False, **common)
    cached = bench.variant_config(setting, teachers, precompute=True, **common)
    for cfg in (supervised, online, cached):
        check_names(load_config(cfg))
        train = cfg["train"]
        assert train["max_steps"] == 20 and train["log_every"] == 1 and train["threads"] == 2
        assert train["val_every"] > train["max_steps"] and train["progress"] is False

    assert differences(online, cached) == {"distill.precompute_teachers"}
    assert online["distill"]["precompute_teachers"] is False and cached["distill"]["precompute_teachers"] is True
    assert cached["distill"]["teacher_cache"] == str(tmp_path / "cache")
    assert [t["name"] for t in cached["teachers"]] == list(TEACHERS)
    # supervised only: no teachers, no distillation section, and the pool's labelled images
    assert {k.split(".")[0] if k.startswith("distill.") else k for k in differences(supervised, cached)} == {
        "teachers", "distill", "data.labelled_only"}
    assert "teachers" not in supervised and "distill" not in supervised
    assert supervised["data"]["labelled_only"] is True

    # first k teachers; int8 only changes the cache encoding; a scaled folder only changes data.train
    one = bench.variant_config(setting, bench.teacher_subset(teachers, 1), **common)
    assert [t["name"] for t in one["teachers"]] == ["depth_teacher"]
    check_names(load_config(one))
    assert differences(one, cached) == {"teachers"}
    int8 = bench.variant_config(setting, teachers, encoding="int8", **common)
    check_names(load_config(int8))
    assert differences(int8, cached) == {"distill.cache.encoding", "distill.cache.semseg_topk"}
    assert load_config(int8).distill.cache.semseg_topk == 3
    scaled = bench.variant_config(setting, teachers, train_folder=tmp_path / "pool_x10", **common)
    assert differences(scaled, cached) == {"data.train"}


def test_throughput_median_skips_warmup_and_empty_steps():
    rows = [{"step": s, "loss": 1.0, "samples_per_s": v} for s, v in enumerate([1.0, 2.0, 40.0, 20.0, 30.0], 1)]
    rows.append({"step": 6, "loss": math.nan, "samples_per_s": 1000.0})  # no update made: left out
    t = bench.throughput(rows, warmup=2, batch=8)
    assert t["images_per_s"] == 30.0 and t["steps_used"] == 3
    assert t["step_ms"] == pytest.approx(1000 * 8 / 30)
    assert t["images_per_s_q25_q75"][0] < 30.0 < t["images_per_s_q25_q75"][1]
    assert math.isnan(bench.throughput(rows[:2], warmup=2, batch=8)["images_per_s"])
    flagged = bench.unstable_runs({"steady": {"images_per_s_q25_q75": [20.0, 30.0]},
                                   "disturbed": {"images_per_s_q25_q75": [0.9, 15.0]}, "short": {}})
    assert len(flagged) == 1 and flagged[0].startswith("disturbed")


def test_ratios_scaling_cache_and_markdown():
    steps = {"supervised": {"images_per_s": 100.0, "step_ms": 80.0, "steps_used": 15, "peak_rss_mb": 800.0,
                            "wall_s": 10.0},
             "online": {"images_per_s": 25.0, "step_ms": 320.0, "steps_used": 15, "peak_rss_mb": 1000.0,
                        "wall_s": 30.0},
             "cached": {"images_per_s": 80.0, "step_ms": 100.0, "steps_used": 15, "peak_rss_mb": 990.0,
                        "wall_s": 12.0}}
    r = bench.ratios(steps)
    # a second, slower round: per variant the median over rounds, per ratio the median of the rounds' ratios
    slow = {k: {**v, "images_per_s": v["images_per_s"] / 2, "step_ms": v["step_ms"] * 2} for k, v in steps.items()}
    slow["cached"]["images_per_s"] = 30.0  # (c) / (a) = 50 / 30 in this round
    rounds = [{"order": list(steps), "steps": steps, "ratios": r},
              {"order": list(steps), "steps": slow, "ratios": bench.ratios(slow)}]
    merged = {v: bench.median_entry([rd["steps"][v] for rd in rounds]) for v in steps}
    assert merged["supervised"]["images_per_s"] == pytest.approx(75.0)
    assert merged["supervised"]["rounds_images_per_s"] == [100.0, 50.0]
    assert merged["cached"]["images_per_s_q25_q75"] == [30.0, 80.0]
    assert r["online_over_supervised"] == pytest.approx(4.0)  # step time (b) / (a)
    assert r["cached_over_supervised"] == pytest.approx(1.25)
    assert r["online_over_cached"] == pytest.approx(3.2)  # the cache's speed-up
    assert math.isnan(bench.ratios({"online": steps["online"]})["online_over_cached"])

    scaling = bench.scaling_summary({
        1: {"teachers": ["depth_teacher"], "online": {"images_per_s": 50.0}, "cached": {"images_per_s": 90.0}},
        3: {"teachers": list(TEACHERS)[:3], "online": {"images_per_s": 25.0}, "cached": {"images_per_s": 80.0}},
    })
    assert list(scaling) == ["1", "3"]
    assert scaling["1"]["online_over_cached"] == pytest.approx(1.8)
    assert scaling["3"]["online_over_cached"] == pytest.approx(3.2)

    build = {"images": 100, "build_json": {"total_s": 5.0, "teacher_s/depth_teacher": 2.0, "images": 100},
             "size_bytes": {"depth_teacher/depth": 614400, "seg_teacher/semseg": 4300800},
             "encodings": {"depth_teacher/depth": "fp16", "seg_teacher/semseg": "topk3"},
             "peak_rss_mb": 900.0, "wall_s": 7.0}
    cache = bench.cache_summary(build)
    assert cache["build_s_per_image"] == pytest.approx(0.05)
    assert cache["teacher_s_per_image"] == {"depth_teacher": pytest.approx(0.02)}
    assert cache["bytes_per_image"]["depth_teacher/depth"] == pytest.approx(6144)
    assert cache["total_bytes_per_image"] == pytest.approx(49152)

    memory = {"1": {"images": 100, "cache_bytes": 4915200, "rss_before_mb": 500.0, "peak_rss_mb": 520.0,
                    "peak_anon_mb": 480.0, "rss_file_end_mb": 30.0, "images_per_s": 300.0},
              "10": {"images": 1000, "cache_bytes": 49152000, "rss_before_mb": 500.0, "peak_rss_mb": 530.0,
                     "peak_anon_mb": 481.0, "rss_file_end_mb": 40.0, "images_per_s": 290.0, "build": cache}}
    loader = {"images only": {"0": {"images_per_s": 400.0}, "1": {"images_per_s": 700.0}},
              "images + cache": {"0": {"images_per_s": 350.0}, "1": {"images_per_s": 650.0}}}
    results = {"meta": {"command": "python -m benchmarks.speed --preset quick", "preset": "quick",
                        "image_size": [48, 64], "pool_images": 128, "batch": 8, "steps": 20, "warmup": 5,
                        "cpus": 2, "runtime": "PyTorch, CPU, 2 torch threads", "load_average_start": 0.1,
                        "load_average_end": 1.9},
               "steps": merged, "rounds": rounds, "ratios": r, "cache": {"fp16": cache}, "scaling": scaling,
               "memory": memory,
               "loader": loader, "notes": ["a note"]}
    md = bench.markdown(results)
    assert "python -m benchmarks.speed --preset quick" in md
    assert "| (b) online / (c) cached (speed-up of the cache) | 3.20 | 3.20, 2.40 |" in md
    assert "| (c) cached / (a) supervised | 1.25 | 1.25, 1.67 |" in md
    assert "| (a) supervised only | 75.0 | 100.0, 50.0 | 120.0 | 800 | 10.0 |" in md
    assert "2 interleaved rounds" in md
    assert "| 3 (depth_teacher, seg_teacher, depth_teacher_dusk) | 25.0 | 80.0 | 3.20 |" in md
    assert "| 10× | 1000 |" in md and "| images + cache | 350.0 | 650.0 |" in md
    assert "6.0 KiB" in md and "2 CPUs" in md and "* a note" in md
    assert bench.implausible(results) == []
    disturbed = {"ratios": bench.ratios({**steps, "supervised": {"images_per_s": 1.0}}),
                 "scaling": bench.scaling_summary({1: {"online": {"images_per_s": 1.0}},
                                                   2: {"online": {"images_per_s": 20.0}}})}
    odd = bench.implausible(disturbed)
    assert len(odd) == 2 and "supervised-only" in odd[0] and "with 2 teachers" in odd[1]
    rows = bench.summary_rows(results)
    assert ("steps", "step time online / cached", "3.20") in rows
    assert ("scaling", "1 teacher(s): step time online / cached", "1.80") in rows
    assert ("loader", "images + cache, num_workers 1: images/s", "650.0") in rows
