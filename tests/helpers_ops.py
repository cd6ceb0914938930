"""Shared test utility for the op tests: random inputs, the relative error and NaN-poisoned outputs."""
from __future__ import annotations

import math

import pytest
import torch

from dami_kernels.ops import triton_available

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error in fp64; NaN anywhere in out gives inf."""
    if not torch.isfinite(out).all():
        return math.inf
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def make(m_shape, n, k, dtype=torch.float32, bias=True):
    """x [*m_shape, K], w_i, w_t [N, K] (scaled by 1/sqrt(K)), b_i, b_t [N] or None, on DEVICE."""
    x = torch.randn(*m_shape, k, device=DEVICE).to(dtype)
    w_i = (torch.randn(n, k, device=DEVICE) / math.sqrt(k)).to(dtype)
    w_t = (torch.randn(n, k, device=DEVICE) / math.sqrt(k)).to(dtype)
    b_i = torch.randn(n, device=DEVICE).to(dtype) if bias else None
    b_t = torch.randn(n, device=DEVICE).to(dtype) if bias else None
    return x, w_i, w_t, b_i, b_t


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every kernel output buffer starts as NaN, so an unwritten tile fails (import it into a test
    module to apply it there)."""
    if not triton_available():
        return
    from dami_kernels.ops.common import launch as common_launch

    monkeypatch.setattr(
        common_launch, "alloc_output", lambda shape, dtype, device: torch.full(shape, math.nan, dtype=dtype, device=device)
    )
