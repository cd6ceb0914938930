"""Random inputs of the op tests: x, both weights and both biases on the test device."""

from __future__ import annotations

import math

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make(m_shape, n, k, dtype=torch.float32, bias=True):
    """x [*m_shape, K], w_i, w_t [N, K] (scaled by 1/sqrt(K)), b_i, b_t [N] or None, on DEVICE."""
    x = torch.randn(*m_shape, k, device=DEVICE).to(dtype)
    w_i = (torch.randn(n, k, device=DEVICE) / math.sqrt(k)).to(dtype)
    w_t = (torch.randn(n, k, device=DEVICE) / math.sqrt(k)).to(dtype)
    b_i = torch.randn(n, device=DEVICE).to(dtype) if bias else None
    b_t = torch.randn(n, device=DEVICE).to(dtype) if bias else None
    return x, w_i, w_t, b_i, b_t
