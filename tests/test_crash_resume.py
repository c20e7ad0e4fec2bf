"""Crash safety: SIGKILL a real training process at a random step, resume, get bit-identical results.

The run is the quick demo's student (four teachers through the cache, detection, validation feedback moving
the teacher weights every 4 steps), checkpointed every step. The kill lands wherever the process happens to
be — mid-step, mid-validation or mid-checkpoint write — and ``--resume`` must reproduce an uninterrupted
run exactly on the CPU: weights, optimizer moments, data order, RNG and the weighting's state (through the
final weights and losses), the logs without duplicated or missing rows.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from polydistill.engine.logging import read_steps
from tests.resume_check import assert_same_last_checkpoint

STEPS = 14


def train_command(config, out, *extra: str) -> list[str]:
    overrides = [f"train.max_steps={STEPS}", "train.save_every=1", "train.val_every=4", "train.threads=1",
                 "train.report=false"]
    return [sys.executable, "-m", "polydistill.cli", "train", str(config), *overrides, "--out", str(out), *extra]


def saved_step(run_dir) -> int:
    try:
        return json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):  # not written yet, or being replaced right now
        return -1


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(quick_demo, tmp_path):
    config = quick_demo.out / "student" / "config.yaml"
    env = quick_demo.env
    straight = tmp_path / "straight"
    done = subprocess.run(train_command(config, straight), capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    seed = int.from_bytes(os.urandom(4), "little")
    kill_after = random.Random(seed).randint(2, STEPS - 3)
    print(f"kill seed {seed}: SIGKILL once step {kill_after} is saved")  # shown on failure, to reproduce it
    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_command(config, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    deadline = time.monotonic() + 300
    while saved_step(killed) < kill_after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"
    assert saved_step(killed) < STEPS

    resumed = subprocess.run(train_command(config, killed, "--resume"), capture_output=True, text=True,
                             timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    assert_same_last_checkpoint(straight, killed, f"kill seed {seed}, after step {kill_after}")
    rows_a, rows_b = read_steps(straight / "steps.csv"), read_steps(killed / "steps.csv")
    assert [r["step"] for r in rows_b] == list(range(1, STEPS + 1))  # no duplicated, no missing rows
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    # the same validation metrics, teacher weights and selection scores at the same steps, once each
    assert (straight / "val.jsonl").read_text() == (killed / "val.jsonl").read_text()
    assert not [p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith(".")]  # no leftovers
