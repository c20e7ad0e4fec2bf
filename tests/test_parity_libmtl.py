"""Parity of the task weightings with LibMTL (median-research-group/LibMTL): UW, DWA, GradNorm.

The expected numbers in ``tests/fixtures/parity/libmtl_*.json`` come from running LibMTL's own classes
(``tests/fixtures/parity/libmtl_generate.py``; each file's ``_source`` names the commit). These tests run
polydistill's strategies only, on the stored inputs, the way the engine calls them: ``weights`` → total
``Σ λ_t·L_t + aux`` → backward → optimizer step → ``after_step``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from polydistill.distill.weighting.base import StepContext
from polydistill.distill.weighting.dwa import DWAWeighting
from polydistill.distill.weighting.gradnorm import GradNormWeighting
from polydistill.distill.weighting.uncertainty import UncertaintyWeighting
from polydistill.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
TOL = dict(rtol=1e-5, atol=1e-6)


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"libmtl_{name}.json").read_text())


def close(actual, expected) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.as_tensor(expected, dtype=torch.float32), **TOL)


def ctx(step: int, steps_per_epoch: int = 1) -> StepContext:
    return StepContext(step=step, steps_per_epoch=steps_per_epoch)


# ------------------------------------------------------------------------------------------------ UW

TASKS3 = ["a", "b", "c"]


def uw_total(unc: UncertaintyWeighting, values: list[float]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    L = torch.tensor(values, requires_grad=True)
    lambdas, aux = unc.weights({t: L[i] for i, t in enumerate(TASKS3)}, ctx(0))
    return sum(lambdas[t] * L[i] for i, t in enumerate(TASKS3)) + aux, L, lambdas


def test_uw_libmtl_convention_matches_libmtl_loss_weights_and_gradients():
    for case in fixture("uw")["cases"]:
        unc = UncertaintyWeighting({"convention": "libmtl"})
        unc.setup(TASKS3)
        if case["s"] == [-0.5] * 3:
            close(unc.log_vars.detach(), case["s"])  # LibMTL's initial value
        unc.log_vars.data = torch.tensor(case["s"])
        total, L, lambdas = uw_total(unc, case["losses"])
        total.backward()
        close(total.detach(), case["loss"])
        close([lambdas[t].detach() for t in TASKS3], case["weights"])
        close(unc.log_vars.grad, case["grad_s"])
        close(L.grad, case["grad_losses"])


def test_uw_libmtl_convention_follows_libmtl_under_sgd():
    ref = fixture("uw")["sgd"]
    unc = UncertaintyWeighting({"convention": "libmtl"})
    unc.setup(TASKS3)
    opt = torch.optim.SGD(unc.param_groups(ref["lr"]))
    for values, expected in zip(ref["losses"], ref["steps"]):
        total, _, lambdas = uw_total(unc, values)
        opt.zero_grad()
        total.backward()
        opt.step()
        close([lambdas[t].detach() for t in TASKS3], expected["weights"])
        close(unc.log_vars.detach(), expected["s_after"])


def test_uw_default_kendall_is_exactly_twice_libmtl_at_the_same_s():
    case = fixture("uw")["cases"][1]
    unc = UncertaintyWeighting()
    unc.setup(TASKS3)
    close(unc.log_vars.detach(), [0.0] * 3)  # λ = 1 at the start, unlike LibMTL's 0.824
    unc.log_vars.data = torch.tensor(case["s"])
    total, L, _ = uw_total(unc, case["losses"])
    total.backward()
    close(total.detach(), 2 * case["loss"])
    close(unc.log_vars.grad, [2 * g for g in case["grad_s"]])
    close(L.grad, [2 * g for g in case["grad_losses"]])


def test_uw_unknown_convention_is_a_config_error():
    with pytest.raises(ConfigError, match="convention"):
        UncertaintyWeighting({"convention": "kendal"})


# ----------------------------------------------------------------------------------------------- DWA

def test_dwa_matches_libmtl_dwa_over_six_epochs():
    ref = fixture("dwa")
    dwa = DWAWeighting({"temperature": ref["temperature"]})  # default period: one epoch, as LibMTL
    names = ["a", "b", "c"]
    dwa.setup(names)
    spe = ref["steps_per_epoch"]
    for step, (values, expected) in enumerate(zip(ref["losses"], ref["weights"])):
        lam, aux = dwa.weights({t: torch.tensor(v) for t, v in zip(names, values)}, ctx(step, spe))
        assert aux is None
        close([lam[t] for t in names], expected)
        dwa.after_step(ctx(step + 1, spe))


# ------------------------------------------------------------------------------------------ GradNorm

def _generator_module():
    spec = importlib.util.spec_from_file_location("libmtl_generate", FIXTURES / "libmtl_generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # only defines things; LibMTL is loaded by its main()
    return module


Net = _generator_module().Net  # the tiny shared-representation model both sides ran


def tensors(inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return torch.tensor(inputs["x"]), {t: torch.tensor(v) for t, v in inputs["y"].items()}


def gradnorm_step(gn: GradNormWeighting, net, opt, x, y, context: StepContext, libmtl_backward: bool) -> dict:
    """One step: ``weights`` → backward → SGD step → ``after_step``.

    ``libmtl_backward=False`` is polydistill's engine: backward of ``Σ λ_t·L_t + aux``. ``True`` is how
    LibMTL's rep_grad=True architecture backpropagates, which the engine does not copy: the heads read a
    detached copy of the representation and receive the *unweighted* ``Σ_t ∇L_t`` (``λ`` scales only the
    gradient reaching the encoder), and during the warm-up no gradient reaches the encoder at all."""
    z = net.rep(x)
    z_in = z.detach().requires_grad_(True) if libmtl_backward else z
    losses = net.losses(z_in, y)
    rep = {t: torch.autograd.grad(L, z_in, retain_graph=True)[0] for t, L in losses.items()}
    norms = {t: gn.rep_grad_norm(g) for t, g in rep.items()}
    lambdas, aux = gn.weights(losses, context, norms)
    opt.zero_grad()
    if libmtl_backward:
        (sum(losses.values()) + (aux if aux is not None else 0.0)).backward()
        if aux is not None:
            z.backward(sum(lambdas[t] * rep[t] for t in losses))
    else:
        (sum(lambdas[t] * L for t, L in losses.items()) + (aux if aux is not None else 0.0)).backward()
    grads = {k: None if p.grad is None else p.grad.clone()
             for k, p in (("logits", gn.logits), ("shared_w", net.shared.weight), ("shared_b", net.shared.bias))}
    opt.step()
    gn.after_step(StepContext(step=context.step + 1, steps_per_epoch=context.steps_per_epoch))
    names = list(losses)
    return {"losses": [float(losses[t].detach()) for t in names], "weights": [float(lambdas[t]) for t in names],
            "G": [float(lambdas[t] * norms[t]) for t in names], "aux": aux, "grads": grads}


@pytest.mark.parametrize("batch", [1, 8])
def test_gradnorm_libmtl_convention_matches_one_libmtl_step(batch):
    ref = fixture("gradnorm")
    case = ref["single"][f"B{batch}"]
    expected = case["expected"]
    net = Net(case["inputs"])
    gn = GradNormWeighting({"convention": "libmtl", "alpha": ref["alpha"], "period": 1})
    gn.setup(["a", "b"])
    opt = torch.optim.SGD([*net.parameters()] + [p for g in gn.param_groups(ref["lr"]) for p in g["params"]],
                          lr=ref["lr"])
    # warm-up of one step whose loss is L(0) (LibMTL: the mean of epoch 0, given as train_loss_buffer[:, 0])
    lam, aux = gn.weights({t: torch.tensor(v) for t, v in zip("ab", ref["initial"])}, ctx(0))
    assert aux is None and all(float(v) == 1.0 for v in lam.values())
    gn.after_step(ctx(1))
    close(gn.initial, ref["initial"])
    out = gradnorm_step(gn, net, opt, *tensors(case["inputs"]), ctx(1), libmtl_backward=False)
    close(out["losses"], expected["losses"])
    close(out["weights"], expected["weights"])
    close(out["G"], expected["G"])
    close(out["aux"].detach(), expected["aux"])
    close(out["grads"]["logits"], expected["grad_logits"])
    close(out["grads"]["shared_w"], expected["grad_shared_w"])
    close(out["grads"]["shared_b"], expected["grad_shared_b"])
    close(gn.logits.detach(), expected["logits_after"])
    close(2 * torch.softmax(gn.logits.detach(), 0), expected["weights_after"])


def test_gradnorm_libmtl_convention_matches_libmtl_through_warmup_and_training():
    ref = fixture("gradnorm")
    run = ref["training"]
    net = Net(run["inputs"])
    gn = GradNormWeighting({"convention": "libmtl", "alpha": ref["alpha"]})  # period: one epoch
    gn.setup(["a", "b"])
    opt = torch.optim.SGD([*net.parameters()] + [p for g in gn.param_groups(ref["lr"]) for p in g["params"]],
                          lr=ref["lr"])
    x, y = tensors(run["inputs"])
    spe = run["steps_per_epoch"]
    for step, expected in enumerate(run["steps"]):
        out = gradnorm_step(gn, net, opt, x, y, ctx(step, spe), libmtl_backward=True)
        close(out["losses"], expected["losses"])
        close(out["weights"], expected["weights"])
        if "G" in expected:
            close(out["G"], expected["G"])
            close(out["aux"].detach(), expected["aux"])
        else:
            assert out["aux"] is None
        close(gn.logits.detach(), expected["logits_after"])
    close(gn.initial, torch.tensor([s["losses"] for s in run["steps"][:spe]]).mean(0))
    close(net.shared.weight.detach(), run["shared_w_after"])


def test_gradnorm_g_conventions_agree_for_one_image_and_differ_for_a_batch():
    paper, libmtl = GradNormWeighting(), GradNormWeighting({"convention": "libmtl"})
    g = torch.Generator().manual_seed(0)
    one, batch = torch.randn(1, 2, 3, 3, generator=g), torch.randn(8, 2, 3, 3, generator=g)
    close(paper.rep_grad_norm(one), libmtl.rep_grad_norm(one))
    close(paper.rep_grad_norm(batch), batch.norm())
    close(libmtl.rep_grad_norm(batch), batch.sum(0).norm())
    assert float(paper.rep_grad_norm(batch)) != pytest.approx(float(libmtl.rep_grad_norm(batch)), rel=1e-2)


def test_gradnorm_libmtl_state_resumes_exactly_mid_warmup():
    def steps(gn, start, stop):
        out = []
        for step in range(start, stop):
            losses = {"a": torch.tensor(1.0 / (step + 1)), "b": torch.tensor(0.5 + 0.1 * step)}
            norms = {"a": torch.tensor(2.0), "b": torch.tensor(0.5)}
            lam, aux = gn.weights(losses, ctx(step, 3), norms)
            out.append(([float(v) for v in lam.values()], None if aux is None else float(aux.detach())))
            gn.after_step(ctx(step + 1, 3))
        return out

    first = GradNormWeighting({"convention": "libmtl"})
    first.setup(["a", "b"])
    unbroken = steps(first, 0, 5)
    second = GradNormWeighting({"convention": "libmtl"})
    second.setup(["a", "b"])
    steps(second, 0, 2)
    resumed = GradNormWeighting({"convention": "libmtl"})
    resumed.setup(["a", "b"])
    resumed.load_state_dict(second.state_dict())
    assert steps(resumed, 2, 5) == unbroken[2:]
    assert unbroken[3][1] is not None and unbroken[2][1] is None  # GradNorm starts after the 3-step warm-up


def test_gradnorm_period_without_libmtl_is_a_config_error():
    with pytest.raises(ConfigError, match="period.*libmtl"):
        GradNormWeighting({"period": 5})
    with pytest.raises(ConfigError, match="convention"):
        GradNormWeighting({"convention": "LibMTL"})
