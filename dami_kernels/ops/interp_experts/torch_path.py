"""The torch backend of the interpolated experts (the CPU path and the autograd path).

Token-expert pairs are sorted by expert once (one host sync for the per-expert counts, as
transformers' own eager experts loop makes); each hit expert then runs two interpolated linears
(`interp_linear_torch`: one weight at an endpoint, one blended GEMM for a shared λ, two accumulating
GEMMs for mixed λ) on its tokens, the activation in between, and adds its routing-weighted output.
"""

from __future__ import annotations

from typing import cast

import torch

from dami_kernels.ops.interp_linear.torch_path import interp_linear_torch


def sort_by_expert(top_k_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(order [P], sorted experts [P]) for the flattened pairs p = t·k + j (P = T·k); stable, so each
    expert's tokens stay in token order (tokens of one sequence stay contiguous)."""
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    return order, flat[order]


def interp_experts_torch(
    x: torch.Tensor,
    gate_up_i: torch.Tensor,
    gate_up_t: torch.Tensor,
    down_i: torch.Tensor,
    down_t: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    lam_tokens: torch.Tensor | None,
    act_fn,
    lam_value: float | None = None,
) -> torch.Tensor:
    """y_t = sum_j w_tj · down_e(λ_t)(act(gate_e(λ_t) x_t) * up_e(λ_t) x_t), e = top_k_index[t, j].

    x [T, H]; gate_up [E, 2I, H]; down [E, H, I]; top_k_index [T, k] (int; the value E, transformers'
    marker for an expert held elsewhere, is skipped); top_k_weights [T, k]; lam_tokens [T] fp32 (may
    be None when lam_value, the λ every token shares, is given). Returns [T, H] in x's dtype.
    """
    num_experts = gate_up_i.shape[0]
    k = top_k_index.shape[1]
    out = torch.zeros_like(x)
    with torch.no_grad():
        order, experts = sort_by_expert(top_k_index)
        counts = torch.bincount(experts, minlength=num_experts + 1).tolist()
    weights = top_k_weights.reshape(-1)[order]
    tokens = order // k
    start = 0
    for e, count in enumerate(counts[:num_experts]):
        if count == 0:
            continue
        tok = tokens[start : start + count]
        w = weights[start : start + count]
        start += count
        lam = None if lam_value is not None else cast(torch.Tensor, lam_tokens)[tok]  # given when lam_value is None
        gate, up = interp_linear_torch(x[tok], gate_up_i[e], gate_up_t[e], lam, None, None, lam_value).chunk(2, -1)
        y = interp_linear_torch(act_fn(gate) * up, down_i[e], down_t[e], lam, None, None, lam_value)
        out.index_add_(0, tok, (y * w.unsqueeze(-1)).to(out.dtype))
    return out
