"""benchmarks.feature_distill: the three students share the budget; configs are valid; the table builds."""

from __future__ import annotations

import argparse

from benchmarks import feature_distill as bench
from polydistill import load_config
from polydistill.demo import PRESETS, DemoSetup
from polydistill.pipeline.train import check_names


def test_variants_share_the_budget_and_validate(tmp_path):
    preset = PRESETS["default"]
    splits = {"pool": tmp_path / "pool", "val": tmp_path / "val"}
    teachers = {n: tmp_path / n for n in ("depth_teacher", "seg_teacher", "depth_teacher_dusk")}
    setup = DemoSetup(preset_name="default", preset=preset, seed=0, splits=splits, teacher_runs=teachers)
    runs = {v: bench.configs(v, setup, seed=1, out=tmp_path / v, projector="mlp",
                             norm="standardize", stage1=1 / 3) for v in bench.VARIANTS}
    for variant, stages in runs.items():
        for _, cfg in stages:
            check_names(load_config(cfg))
        assert sum(cfg["train"]["max_steps"] for _, cfg in stages) == preset.student_steps, variant
    plain, dune = runs["plain"][0][1], runs["dune"][0][1]
    assert set(dune["tasks"]) - set(plain["tasks"]) == {"seg_feat", "depth_feat"}
    assert dune["train"] == plain["train"] and dune["student"] == plain["student"]
    (s1, first), (s2, second) = runs["sak"]
    assert set(first["tasks"]) == {"seg_feat", "depth_feat"} and [t["name"] for t in first["teachers"]] == [
        "depth_teacher", "seg_teacher"]
    assert second["train"]["init_from"] == str(tmp_path / "sak" / "stage1") and second["student"]["layout"] == "sak"
    (_, single), = runs["sak_one_stage"]
    assert single["student"]["layout"] == "sak" and single["tasks"] == dune["tasks"]


def test_summary_and_markdown():
    run = {"test": {"depth": {"abs_rel": 0.2, "delta1": 0.7}, "semseg": {"miou": 0.6}}, "delta_m": -2.0,
           "params": 1_000_000, "latency_ms": 8.0}
    per_seed = [{"plain": run, "dune": {**run, "delta_m": -1.0}}, {"plain": run, "dune": {**run, "delta_m": -3.0}}]
    summary = bench.summarise(per_seed)
    assert summary["dune"]["delta_m"] == {"mean": -2.0, "std": 1.4142135623730951}
    args = argparse.Namespace(preset="default", projector="mlp", norm="standardize", stage1=1 / 3)
    text = bench.markdown(summary, args, [0, 1])
    assert "| dune | 0.2000 ± 0.0000" in text and "-2.00 ± 1.41" in text
