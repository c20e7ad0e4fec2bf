"""benchmarks.weighting: every variant is a valid config that changes one thing; the tables build."""

from __future__ import annotations

import math

from benchmarks import weighting as bench
from polydistill import load_config
from polydistill.demo import PRESETS, DemoSetup
from polydistill.pipeline.train import check_names


def test_variants_are_valid_and_change_one_thing(tmp_path):
    preset = PRESETS["quick"]
    splits = {"pool": tmp_path / "pool", "val": tmp_path / "val"}
    teachers = {"depth_teacher": tmp_path / "t1", "seg_teacher": tmp_path / "t2", "depth_teacher_dusk": tmp_path / "t3"}
    setup = DemoSetup(preset_name="quick", preset=preset, seed=0, splits=splits, teacher_runs=teachers)
    found = bench.variants(preset)
    assert {"static", "feedback", "rl_reinforce", "rl_surrogate", "dropout", "confidence", "uncertainty", "dwa",
            "gradnorm", "trajectory"} <= set(found)
    reference = found["static"]
    for name, distill in found.items():
        cfg = bench.run_config(setup, distill, seed=3, threads=1, progress=False)
        assert cfg["train"]["seed"] == 3
        check_names(load_config(cfg))
        changed = [k for k in set(distill) | set(reference) if distill.get(k) != reference.get(k)]
        assert len(changed) == (0 if name == "static" else 1), (name, changed)


def test_summary_verdict_and_markdown():
    runs = []
    for variant, dm in (("static", [-5.0, -6.0]), ("gradnorm", [-4.0, -7.0])):
        for seed, value in enumerate(dm):
            test = {"depth": {"abs_rel": 0.2, "rmse": 1.0, "delta1": 0.7}, "semseg": {"miou": 0.4, "pixel_acc": 0.8}}
            runs.append({"variant": variant, "seed": seed, "distill": {}, "test": test, "delta_m": value,
                         "median_step_time_s": 0.1, "step_time_overhead_pct": 0.0 if variant == "static" else 10.0,
                         "best_step": 10, "delta_m_by_checkpoint": {"best": value, "last": math.nan}})
    summary = bench.summarise(runs, ["static", "gradnorm"])
    assert summary["gradnorm"]["delta_m"]["mean"] == -5.5
    assert summary["gradnorm"]["step_time_overhead_pct"]["mean"] == 10.0
    line = bench.verdict(summary, runs)
    assert "gradnorm" in line and "does not beat" in line and "1 of 2 seeds" in line
    meta = {"command": "python -m benchmarks.weighting", "preset": "quick", "student_steps": 40, "batch": 8,
            "checkpoint": "best", "seeds": [0, 1], "test_images": 32, "load_average": 0.0, "cpus": 2, "runtime": "cpu",
            "dwa_period": 3}
    md = bench.markdown(summary, runs, {"depth_teacher": {"depth": {"abs_rel": 0.2, "delta1": 0.8}}}, meta)
    assert "| gradnorm |" in md and "-5.50 ± 2.12" in md and "python -m benchmarks.weighting" in md
