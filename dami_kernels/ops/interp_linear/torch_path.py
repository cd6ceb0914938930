"""The torch backend (the CPU path): the cheapest torch formulation for what is known about λ.

Paths, chosen on the host from `lam_value` (a λ that every row shares, known without a device sync):
  - endpoint (λ = 0 or 1 for every row): one F.linear on that side's weight;
  - uniform λ with at least BLEND_MIN_ROWS rows: blend the two weights once (N·K work) and run one
    GEMM instead of two;
  - uniform λ with fewer rows: two accumulating `addmm` calls into one output buffer, λ as their
    scale factors;
  - mixed λ: y = b_I + ((1-λ)∘x) W_Iᵀ + (λ∘x) W_Tᵀ + λ(b_T - b_I), two accumulating `addmm` calls into
    one output buffer (both weights read once, no other [M, N] intermediate; the per-row λ scaling is
    applied to x, which is [M, K]).
BLEND_MIN_ROWS: blending costs about two single-row GEMMs, so from 4 rows on one blended GEMM beats two
(the measurement: docs/fused-op.md, "The CPU path").
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

BLEND_MIN_ROWS = 4


def interp_linear_torch(
    x: torch.Tensor,
    w_i: torch.Tensor,
    w_t: torch.Tensor,
    lam_rows: torch.Tensor | None,
    bias_i: torch.Tensor | None,
    bias_t: torch.Tensor | None,
    lam_value: float | None = None,
) -> torch.Tensor:
    """y = (1-λ_r)(W_I x_r + b_I) + λ_r(W_T x_r + b_T). Returns [..., N] in x's dtype.

    x [..., K] (M = all leading dims; the mixed path needs x [M, K]); w [N, K]; biases [N] | None;
    lam_rows [M] (or [1], broadcast) fp32, may be None when lam_value is given; lam_value: the λ
    shared by every row when the caller knows it on the host. The callers pass both biases or neither
    (the casts below rest on that, and on lam_rows being given whenever lam_value is None).
    """
    if lam_value is not None:
        if lam_value == 0.0:
            return F.linear(x, w_i, bias_i)
        if lam_value == 1.0:
            return F.linear(x, w_t, bias_t)
        if x.numel() >= BLEND_MIN_ROWS * x.shape[-1]:
            w = torch.lerp(w_i, w_t, lam_value)
            b = torch.lerp(bias_i, cast(torch.Tensor, bias_t), lam_value) if bias_i is not None else None
            return F.linear(x, w, b)
        lead = x.shape[:-1]
        x2d = x.reshape(-1, x.shape[-1])
        # Few rows: the two products accumulate into one buffer, λ as the GEMMs' scale factors.
        if bias_i is None:
            out = torch.mm(x2d, w_i.t()).mul_(1.0 - lam_value)
        else:
            out = torch.addmm(bias_i, x2d, w_i.t(), beta=1.0 - lam_value, alpha=1.0 - lam_value)
            out.add_(cast(torch.Tensor, bias_t), alpha=lam_value)
        return out.addmm_(x2d, w_t.t(), alpha=lam_value).reshape(lead + (w_i.shape[0],))
    x2d = x
    lam = cast(torch.Tensor, lam_rows).reshape(-1, 1).to(x2d.dtype)
    if bias_i is None:
        out = torch.mm(x2d * (1.0 - lam), w_i.t())
    else:
        out = torch.addmm(bias_i, x2d * (1.0 - lam), w_i.t())
    out.addmm_(x2d * lam, w_t.t())
    if bias_i is not None:
        bias_delta = cast(torch.Tensor, bias_t) - bias_i
        if lam.shape[0] == 1:
            out.add_(bias_delta * lam.reshape(()))
        else:
            out.addr_(lam.reshape(-1), bias_delta)
    return out
