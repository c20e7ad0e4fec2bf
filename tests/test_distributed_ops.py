"""The cross-rank operations and the strategies' statistics under two real gloo processes.

Each check runs in two spawned processes that hold different data; the parent asserts on what they return.
A single process is the reference: the functions are the identity there.
"""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from polydistill.distill.weighting.base import StepContext
from polydistill.distill.weighting.dwa import DWAWeighting
from polydistill.distill.weighting.gradnorm import GradNormWeighting
from polydistill.engine import distributed as D


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, check, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results[rank] = check(rank)
    finally:
        dist.destroy_process_group()


def on_two_ranks(check) -> list:
    """Run ``check(rank)`` in two gloo processes; return their results in rank order."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(free_port(), check, results), nprocs=2, join=True)
        return [results[0], results[1]]


def _reductions(rank: int):
    local = torch.tensor([1.0, float("nan"), 3.0 + rank, float("nan")])
    if rank == 1:
        local[1] = 5.0
    model = torch.nn.BatchNorm1d(2)
    model.running_mean.fill_(float(rank * 2))
    D.average_buffers(model)
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.full((2,), float(rank + 1))  # q has a gradient nowhere, p everywhere
    r = torch.nn.Parameter(torch.zeros(1))
    if rank == 0:
        r.grad = torch.tensor([4.0])  # r has one on rank 0 only: counts as zero on rank 1
    D.average_gradients([p, q, r])
    return {
        "nanmean": D.nanmean_over_ranks(local).tolist(),
        "any": (D.any_over_ranks(rank == 1), D.any_over_ranks(False)),
        "broadcast": D.broadcast_from_main({"rank": rank}),
        "buffer": model.running_mean.tolist(),
        "grads": (p.grad.tolist(), q.grad, r.grad.tolist()),
    }


def _both(rank: int):
    return {"reductions": _reductions(rank), "strategies": _strategies(rank)}


@pytest.fixture(scope="module")
def two_ranks() -> list:
    return on_two_ranks(_both)  # one spawn for every check (starting processes is the slow part)


def test_reductions_agree_on_every_rank(two_ranks):
    for out in (r["reductions"] for r in two_ranks):
        assert out["nanmean"][0] == 1.0 and out["nanmean"][1] == 5.0 and out["nanmean"][2] == 3.5
        assert math.isnan(out["nanmean"][3])  # no rank had it
        assert out["any"] == (True, False)
        assert out["broadcast"] == {"rank": 0}
        assert out["buffer"] == [1.0, 1.0]
        assert out["grads"] == ([1.5, 1.5], None, [2.0])


def test_reductions_are_the_identity_in_one_process():
    x = torch.tensor([1.0, float("nan")])
    assert D.world_size() == 1 and D.nanmean_over_ranks(x) is x
    assert D.any_over_ranks(True) and not D.any_over_ranks(False) and D.broadcast_from_main(3) == 3


def _strategies(rank: int):
    """Each rank sees different task losses; the engine hands the strategies the all-rank means."""
    local = {"a": torch.tensor(1.0 + 2 * rank, requires_grad=True), "b": torch.tensor(4.0 - rank, requires_grad=True)}
    means = D.nanmean_over_ranks(torch.stack([local["a"].detach(), local["b"].detach()])).tolist()
    ctx = StepContext(step=1, steps_per_epoch=1, global_losses={"a": means[0], "b": means[1]})
    gradnorm = GradNormWeighting()
    gradnorm.setup(["a", "b"])
    norms = {"a": torch.tensor(1.0 + rank), "b": torch.tensor(2.0)}  # local gradient norms...
    globals_ = D.nanmean_over_ranks(torch.stack(list(norms.values()))).tolist()
    norms = {"a": torch.tensor(globals_[0]), "b": torch.tensor(globals_[1])}  # ...and their all-rank means
    _, aux = gradnorm.weights(local, ctx, norms)
    aux.backward()
    D.average_gradients(gradnorm.parameters())
    dwa = DWAWeighting()
    dwa.setup(["a", "b"])
    dwa.weights(local, ctx)
    return {"initial": gradnorm.initial.tolist(), "grad": gradnorm.task_w.grad.tolist(), "sums": dwa.sums.tolist()}


def test_gradnorm_and_dwa_keep_all_rank_statistics(two_ranks):
    first, second = (r["strategies"] for r in two_ranks)
    assert first == second  # the strategies' state is identical on both ranks
    assert first["initial"] == pytest.approx([2.0, 3.5])  # L(0): the mean of the ranks' losses, not rank 0's
    assert first["sums"] == pytest.approx([2.0, 3.5])
