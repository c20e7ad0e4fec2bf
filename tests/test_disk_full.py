"""A real write failure during a checkpoint (a file-size limit: the kernel refuses the write with EFBIG, and
safetensors raises its own ``SafetensorError``, not an ``OSError``) is the documented one-line error, exit 2,
and the previous checkpoint stays intact."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys

import pytest
import yaml

from polydistill.config import load_config
from polydistill.pipeline.train import train_run
from tests.conftest import tiny_config, write_tiny_dataset

LIMIT = 200_000  # bytes: under model.safetensors (~400 kB), over the logs and state.json


def limit_file_size() -> None:  # in the child, before exec: writes past LIMIT fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_real_write_failure_during_a_checkpoint_is_one_line_exit_2_and_keeps_the_previous(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", 8, seed=41)
    cfg = tiny_config(data, None, max_steps=4, save_every=1, val_every=None, threads=1)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    train_run(load_config(config), run, stop_at_step=2)
    last = run / "checkpoints" / "last"
    before = {p.name: p.read_bytes() for p in last.iterdir()}
    assert len(before["model.safetensors"]) > LIMIT

    cmd = [sys.executable, "-m", "polydistill.cli", "train", str(config), "--out", str(run), "--resume"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=limit_file_size)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    text = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "SafetensorError" not in done.stderr
    assert f"cannot write checkpoint {last} (EFBIG: File too large)" in text, text
    assert "previous checkpoint there is unchanged" in text and "--resume" in text
    assert len(lines) == 1 or all(ln.startswith(" ") for ln in lines[1:]), lines  # one message (maybe wrapped)
    assert {p.name: p.read_bytes() for p in last.iterdir()} == before  # the step-2 checkpoint, byte for byte
    assert json.loads((last / "state.json").read_text())["step"] == 2
    assert not [p.name for p in last.parent.iterdir() if p.name.startswith(".")]  # no half-written folder
