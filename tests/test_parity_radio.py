"""Numerical parity with RADIO's PHI-S (NVlabs/RADIO ``examples/common/phi_s.py`` + ``hadamard.py``) and the
exact Hadamard matrices behind it.

``tests/fixtures/parity/radio.json`` holds numbers produced by running RADIO's code on the features built
below; ``tests/fixtures/parity/radio_generate.py`` regenerates them from a RADIO checkout. Nothing of RADIO's
code is in this file. Two conventions are reconciled here, not in polydistill:

* RADIO's covariance is unbiased, ours (one batch of running statistics) biased: our output is RADIO's
  times ``sqrt(N / (N − 1))``;
* eigenvectors have no intrinsic sign: both transforms are mapped back to their eigenbasis (``Hᵀ·W``),
  each eigenvector is turned so that its largest-magnitude entry is positive, and rotated again by the
  implementation's *own* Hadamard matrix — so the comparison still catches a different Hadamard matrix.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from polydistill.distill.feature_norm import TeacherNorm, hadamard, has_hadamard, padded_dim

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "radio.json"

# ------------------------------------------------------------------------------------------ inputs
# (shared with radio_generate.py)

PHI_S_SIZES, TOKENS, PROBES = (256, 384), 2048, 8
HADAMARD_SIZES = (12, 20, 36, 96, 384, 768, 1152, 1280)


def phi_s_features(c: int) -> torch.Tensor:
    """``(8, c, 16, 16)`` features (2048 tokens) whose biased sample covariance has exactly the eigenvalues
    1 … 10 (evenly spaced, so the eigenvectors are well conditioned) in a random basis, with an offset."""
    g = torch.Generator().manual_seed(1000 + c)
    z = torch.randn(TOKENS, c, generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    e, v = torch.linalg.eigh(z.T @ z / TOKENS)
    z = z @ v @ torch.diag(e.rsqrt()) @ v.T  # exactly white
    basis, _ = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=torch.float64))
    x = z @ torch.diag(torch.linspace(1, 10, c, dtype=torch.float64).sqrt()) @ basis.T
    x = x + 2 * torch.randn(c, generator=g, dtype=torch.float64)
    return x.float().reshape(8, 16, 16, c).permute(0, 3, 1, 2).contiguous()


def tokens(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` → ``(B·h·w, C)``, in the order TeacherNorm flattens them."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def sketch_directions(c: int) -> torch.Tensor:
    return torch.randn(c, 8, generator=torch.Generator().manual_seed(99), dtype=torch.float64)


def fix_signs(whiten: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``W = α⁻¹·H·Uᵀ`` → the same with every eigenvector (row of ``Uᵀ``) signed by its largest entry."""
    m = h.T @ whiten
    sign = m.gather(1, m.abs().argmax(1, keepdim=True)).sign()
    return h @ (m * sign)


def hadamard_digest(pm_one: torch.Tensor) -> str:
    """sha256 of a ±1 matrix as row-major int8."""
    return hashlib.sha256(pm_one.round().to(torch.int8).numpy().tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads(FIXTURE.read_text())


def test_fixture_names_its_source(ref):
    assert ref["_source"]["repository"] == "NVlabs/RADIO" and len(ref["_source"]["commit"]) == 40


@pytest.mark.parametrize("n", [n for n in range(1, 257) if has_hadamard(n)] + [384, 768, 1152, 1280])
def test_hadamard_is_exact(n):
    h = hadamard(n)
    assert torch.allclose(h.abs(), torch.full_like(h, 1 / math.sqrt(n)), rtol=0, atol=1e-15)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=h.dtype), rtol=0, atol=1e-12)
    pm_one = (h * math.sqrt(n)).round()
    assert torch.equal(pm_one @ pm_one.T, n * torch.eye(n, dtype=h.dtype))  # H·Hᵀ = n·I exactly


def test_which_orders_are_constructed():
    # every power of two; Paley I (12 = 11+1), Paley II (36 = 2·18), and Sylvester ⊗ either
    assert all(has_hadamard(1 << k) for k in range(12))
    assert all(has_hadamard(n) for n in (12, 20, 36, 96, 384, 768, 1152, 1280, 1536))
    # none exists for odd orders > 1 or orders 2 mod 4; 92 and 100 exist but are not constructed here
    assert not any(has_hadamard(n) for n in (3, 6, 10, 383, 386, 92, 100))
    assert [padded_dim(n) for n in (256, 384, 768, 6, 92, 1000)] == [256, 384, 768, 8, 128, 1000]
    with pytest.raises(ValueError, match="no Hadamard matrix of order 92"):
        hadamard(92)
    h = hadamard(12)
    h.zero_()  # the cache hands out copies
    assert hadamard(12).abs().min() > 0


def test_hadamard_matrices_equal_radios(ref):
    """Same ±1 matrix as RADIO's construction, entry for entry (so PHI-S outputs can agree element-wise)."""
    for n in HADAMARD_SIZES:
        assert hadamard_digest(hadamard(n) * math.sqrt(n)) == ref["hadamard_sha256"][str(n)], n


@pytest.mark.parametrize("c", PHI_S_SIZES)
def test_phi_s_matches_radio(ref, c):
    expected = ref["phi_s"][str(c)]
    features = phi_s_features(c)
    norm = TeacherNorm(c, "phi_s").train()
    out = norm(features)  # one batch: the running statistics are this batch's (biased) ones
    assert norm.out_channels == c
    # isotropic, unit variance in every dimension (biased variance, our convention)
    var = tokens(out).double().var(0, unbiased=False)
    assert float((var - 1).abs().max()) < 1e-4
    assert expected["variance_min"] == pytest.approx(1.0, abs=1e-6)  # RADIO: unit variance, unbiased
    x = tokens(features).double()[:PROBES] - norm.mean.double()
    y = x @ fix_signs(norm.transform.double(), hadamard(c)).T
    scale = math.sqrt(TOKENS / (TOKENS - 1))  # RADIO's unbiased covariance
    gram = torch.tensor(expected["gram"], dtype=torch.float64) * scale**2
    assert torch.allclose(y @ y.T, gram, rtol=1e-5, atol=1e-4)
    assert torch.allclose(y[0, :8], torch.tensor(expected["first"], dtype=torch.float64) * scale, atol=1e-4)
    got = y @ sketch_directions(c)
    assert torch.allclose(got, torch.tensor(expected["sketch"], dtype=torch.float64) * scale, atol=1e-3)


def test_phi_s_power_of_two_transform_is_unchanged():
    """For 2^k channels the transform is the Sylvester one it always was (checked on a tiny case)."""
    features = phi_s_features(256)[:, :8]
    norm = TeacherNorm(8, "phi_s").train()
    norm(features)
    cov = norm.cov.double()
    eigenvalues, eigenvectors = torch.linalg.eigh((cov + cov.T) / 2)
    sylvester = torch.tensor([[1.0]], dtype=torch.float64)
    while sylvester.shape[0] < 8:
        sylvester = torch.cat([torch.cat([sylvester, sylvester], 1), torch.cat([sylvester, -sylvester], 1)], 0)
    want = sylvester / math.sqrt(8) @ eigenvectors.T / math.sqrt(float(eigenvalues.sum()) / 8)
    assert torch.equal(norm.transform, want.float())
