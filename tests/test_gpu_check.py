"""benchmarks.gpu_check runs end to end (on the CPU, at toy sizes) and its table reads its own numbers."""

from __future__ import annotations

import math

from benchmarks import gpu_check


def test_gpu_check_measures_online_and_cached_distillation(tmp_path):
    results = gpu_check.main(["--sizes", "32", "--images", "8", "--batch", "2", "--steps", "4", "--warmup", "1",
                           "--teacher-steps", "1", "--precision", "bf16", "--skip-demo", "--out", str(tmp_path)])
    (row,) = results["throughput"]
    for mode in ("online", "cached"):
        assert row[mode]["images_per_s"] > 0 and row[mode]["steps_used"] == 3
    assert math.isclose(row["cached_over_online"], row["cached"]["images_per_s"] / row["online"]["images_per_s"])
    assert row["cache_build_s_per_image"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert f"| 32×32 | 2 | {row['online']['images_per_s']:.1f} | {row['cached']['images_per_s']:.1f} |" in table
    assert "bf16" in table and (tmp_path / "gpu_check.json").exists()
