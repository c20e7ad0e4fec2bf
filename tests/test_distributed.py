"""Multi-process training: two CPU processes (gloo, launched by torchrun) train like one process.

The claim tested, and its tolerance: W ranks with a batch of B each train exactly like one process with a
batch of B and ``grad_accum_steps = W`` — the sampler deals whole batches to ranks, so every rank normalises
the same images together that one micro-batch would, and DDP's gradient mean equals accumulation's. The
trainable parameters and every logged loss agree to float rounding (1e-5). Running statistics (batch norm)
cannot agree exactly — a single process updates them once per micro-batch, the ranks once each and are then
averaged — so they, and the validation metrics of a 12-step model that depend on them, are not compared.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from polydistill.engine.logging import read_steps
from polydistill.engine.sampler import EpochSampler
from tests.conftest import tiny_config, write_tiny_dataset

RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5, abs=1e-7)


def train_command(config, out, *overrides: str, processes: int = 1) -> list[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
                if processes > 1 else [sys.executable])
    return [*launcher, "-m", "polydistill.cli", "train", str(config), *overrides, "--out", str(out)]


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_process_accumulating_two_batches(quick_demo, tmp_path):
    config = quick_demo.out / "student" / "config.yaml"  # the quick demo's student: 4 teachers, cache, detection
    env = {**quick_demo.env, "OMP_NUM_THREADS": "1"}  # one core per process
    # one validation, at the end: feedback weighting reacts to validation metrics, which depend on the batch-norm
    # running statistics that legitimately differ (see the module docstring), so a validation mid-run could
    # set different teacher weights in the two runs and part them for reasons that have nothing to do with DDP
    common = ["data.batch_size=4", "train.max_steps=12", "train.val_every=12", "train.threads=1",
              "train.report=false"]
    two = tmp_path / "two_processes"
    result = run(train_command(config, two, *common, processes=2), env)
    one = tmp_path / "one_process"
    run(train_command(config, one, *common, "train.grad_accum_steps=2"), env)

    a = load_file(str(two / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(one / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        if not key.endswith(RUNNING_STATS):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)
    moved = [k for k in a if k.endswith("running_var") and not torch.equal(a[k], b[k])]
    assert moved and all(torch.isfinite(a[k]).all() for k in moved)  # averaged over ranks, still statistics

    steps_two, steps_one = read_steps(two / "steps.csv"), read_steps(one / "steps.csv")
    assert [r["step"] for r in steps_two] == list(range(1, 13))  # rank 0 alone writes the log: no duplicates
    losses = [c for c in steps_one[0] if c == "loss" or c.startswith("loss/")]
    assert "loss/detection/det_teacher" in losses
    for r2, r1 in zip(steps_two, steps_one):
        for column in losses:  # a term no image of the step has (a rare label) is NaN in both
            a, b = r2.get(column, math.nan), r1.get(column, math.nan)  # an empty cell reads as missing
            assert same(a, b), (r2["step"], column, a, b)

    val_two = [json.loads(line) for line in (two / "val.jsonl").read_text().splitlines()]
    val_one = [json.loads(line) for line in (one / "val.jsonl").read_text().splitlines()]
    assert [v["step"] for v in val_two] == [12]
    assert "weights" in val_two[-1]["teacher_weighting"]  # validation feedback ran (rank 0's metrics, broadcast)
    # what DDP guarantees ends at the weights and losses above; validation metrics of a 12-step model depend on
    # batch-norm running statistics (averaged over ranks here, per micro-batch there) and are not compared
    # (a fresh machine measured depth AbsRel 0.446 vs 5.51). They must exist for every task, from rank 0 alone.
    assert set(val_two[-1]["metrics"]) == set(val_one[-1]["metrics"]) == {"depth", "semseg", "detection"}
    assert (result.stdout + result.stderr).count("done:") == 1  # one summary line, from rank 0
    assert sorted(os.listdir(two / "checkpoints")) == ["best", "last"]


def test_two_processes_with_sparse_labels_and_gradnorm_never_wait_on_each_other(tmp_path):
    """Most images carry no label and there are no teachers, so at many steps one rank has a loss and the other
    none: it must still join the gradient all-reduce (a zero-loss backward), and when no rank has a signal every
    rank must skip together. GradNorm adds the all-reduced loss statistics and gradient norms on top."""
    labels = [("depth", "semseg") if i % 5 == 0 else () for i in range(40)]
    train = write_tiny_dataset(tmp_path / "train", 40, seed=7, labels=labels)
    val = write_tiny_dataset(tmp_path / "val", 4, seed=8)
    cfg = tiny_config(train, val, max_steps=10, val_every=5, threads=1)
    cfg["data"]["batch_size"] = 2
    cfg["distill"] = {"task_weighting": {"name": "gradnorm"}}
    config = tmp_path / "sparse.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run(train_command(config, tmp_path / "two", processes=2), env)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    rows = read_steps(tmp_path / "two" / "steps.csv")
    assert summary["steps"] == 10 and len(rows) == 10
    dealt = [list(EpochSampler(40, seed=0, epoch=0, batch_size=2, rank=k, world_size=2)) for k in (0, 1)]
    signal = [[any(labels[i] for i in mine[2 * s: 2 * s + 2]) for s in range(10)] for mine in dealt]
    assert any(a != b for a, b in zip(*signal))  # steps where one rank has a label and the other none do occur
    # a step is skipped (NaN loss) exactly when no rank had a label
    assert [math.isnan(r["loss"]) for r in rows] == [not (a or b) for a, b in zip(*signal)]
    assert summary["skipped_steps"] == sum(math.isnan(r["loss"]) for r in rows)
    weights = load_file(str(tmp_path / "two" / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
