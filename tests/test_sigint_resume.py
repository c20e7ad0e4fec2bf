"""Ctrl-C (SIGINT) at a random moment of a real training process, then ``--resume``: bit-identical to an
uninterrupted run, as after SIGKILL (tests/test_crash_resume.py). An interrupt in the middle of a step finishes
that step before the checkpoint is written: saved mid-step, the batch-norm statistics (and their
``num_batches_tracked`` counters) would already hold the step's forward, which the resumed run repeats."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import yaml
from safetensors.torch import load_file

from polydistill.engine.logging import read_steps
from tests.conftest import tiny_config
from tests.resume_check import assert_same_last_checkpoint

STEPS = 14


def saved_step(run_dir) -> int:
    try:
        return json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):  # not written yet, or being replaced right now
        return -1


def test_sigint_at_a_random_moment_then_resume_is_bit_identical(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data["train"], tiny_data["val"], max_steps=STEPS, save_every=2, val_every=4, threads=1)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))

    def train(out, *extra):
        return [sys.executable, "-m", "polydistill.cli", "train", str(config), "--out", str(out), *extra]

    straight = tmp_path / "straight"
    done = subprocess.run(train(straight), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    after, fraction = rng.randint(4, STEPS - 4), rng.random()
    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(train(interrupted), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300

    def wait_for(step: int) -> float:
        while saved_step(interrupted) < step and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        return time.monotonic()

    before = wait_for(after - 2)
    seconds_per_step = (wait_for(after) - before) / 2  # checkpoints every 2 steps
    delay = fraction * seconds_per_step  # anywhere in the step after the checkpoint: forward, backward, update
    print(f"interrupt seed {seed}: SIGINT {delay:.3f} s after step {after} is saved")  # shown on failure
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, f"the run was not interrupted (rc {proc.returncode}): {output[-2000:]}"
    assert "Traceback" not in output and "interrupted at step" in output, output[-2000:]
    assert saved_step(interrupted) < STEPS

    resumed = subprocess.run(train(interrupted, "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    assert_same_last_checkpoint(straight, interrupted, f"interrupt seed {seed}")
    rows_a, rows_b = read_steps(straight / "steps.csv"), read_steps(interrupted / "steps.csv")
    assert [r["step"] for r in rows_b] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert (straight / "val.jsonl").read_text() == (interrupted / "val.jsonl").read_text()
    a = load_file(str(straight / "checkpoints" / "best" / "model.safetensors"))
    b = load_file(str(interrupted / "checkpoints" / "best" / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
