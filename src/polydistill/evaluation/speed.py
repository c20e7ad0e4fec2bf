"""Latency and size of models, measured side by side.

Latency is the median over several *interleaved* rounds (model A, model B, A, B, ...), so that a
background hiccup or CPU frequency change hits every model alike and the ratios stay meaningful.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.inference_mode()  # what deployment uses: no autograd bookkeeping at all
def measure_latency(models: dict[str, Callable[[torch.Tensor], object]], image_size: tuple[int, int], *,
                    rounds: int = 7, iters: int = 5, warmup: int = 3, batch: int = 1,
                    device: str | torch.device = "cpu") -> dict[str, float]:
    """Median milliseconds per call at ``batch`` images of ``image_size`` for every model."""
    x = torch.rand(batch, 3, *image_size, device=device)
    for fn in models.values():
        for _ in range(warmup):
            fn(x)
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, fn in models.items():
            if torch.cuda.is_available() and str(device).startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(iters):
                fn(x)
            if torch.cuda.is_available() and str(device).startswith("cuda"):
                torch.cuda.synchronize()
            samples[name].append((time.perf_counter() - t0) / iters * 1000)
    return {name: statistics.median(v) for name, v in samples.items()}
