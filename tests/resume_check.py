"""One check shared by the crash tests: a resumed run ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file


def assert_same_last_checkpoint(straight: Path, resumed: Path, context: str) -> None:
    """``checkpoints/last`` of both runs: every tensor of the weights (batch-norm counters included) and of the
    training state (optimizer moments, RNG) bit for bit, and the state's step, best, weighting and RNG entries
    (compared as JSON text, so NaN scores compare equal)."""
    for name in ("model.safetensors", "training.safetensors"):
        a = load_file(str(straight / "checkpoints" / "last" / name))
        b = load_file(str(resumed / "checkpoints" / "last" / name))
        assert a.keys() == b.keys()
        different = [k for k in a if not (a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                          and (a[k] == b[k]).all())]
        assert not different, f"{name}: {different[:5]} differ ({context})"
    state_a = json.loads((straight / "checkpoints" / "last" / "state.json").read_text())
    state_b = json.loads((resumed / "checkpoints" / "last" / "state.json").read_text())
    for key in ("step", "best_step", "best_score", "weighting", "rng"):
        assert json.dumps(state_a[key]) == json.dumps(state_b[key]), key
