"""Reading teacher weights safely, and knowing whether the hub may be asked for them (shared by all sources)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ConfigError


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (what ``polydistill demo`` sets) or huggingface_hub's own offline mode."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return True
    try:
        from huggingface_hub import is_offline_mode
    except ImportError:
        return False
    return bool(is_offline_mode())


def read_state_dict(teacher: str, path: Path, option: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` (safetensors) or another file (``torch.load(weights_only=True)``)."""
    if not path.is_file():
        raise ConfigError(f"teacher '{teacher}': {option} not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickled code, wrong format: all user-fixable
        raise ConfigError(f"teacher '{teacher}': cannot read {option} {path}: "
                          f"{type(exc).__name__}: {exc}") from exc
    if isinstance(state, dict):  # a training checkpoint that wraps the state dict
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict) and not any(torch.is_tensor(v) for v in state.values()):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"teacher '{teacher}': {option} {path} does not hold a state dict "
                          "(parameter name -> tensor)")
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
