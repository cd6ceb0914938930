"""The fp64 test oracle of the interpolated mixture-of-experts MLP, written as plainly as possible:
every (token, slot) pair blends its expert's weights at the token's λ and runs the expert on them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def interp_experts_fp64(x, gate_up_i, gate_up_t, down_i, down_t, top_k_index, top_k_weights, lam, act_fn=F.silu):
    """Exact fp64 math. x [T, H]; gate_up [E, 2I, H]; down [E, H, I]; top_k_index [T, k] (int);
    top_k_weights [T, k]; lam: float, [], [T] (per token) or [S] (per sequence of T/S consecutive
    tokens; top_k_index's value E adds nothing). Returns fp64 [T, H]:
    y_t = sum_j w_tj · down_e(λ_t) · (act(gate_e(λ_t) x_t) * up_e(λ_t) x_t), e = top_k_index[t, j]."""
    t, h = x.shape
    lam = torch.as_tensor(lam, dtype=torch.float64).to(x.device).reshape(-1)
    lam = lam.expand(t) if lam.numel() == 1 else lam.repeat_interleave(t // max(lam.numel(), 1))
    out = torch.zeros(t, h, dtype=torch.float64, device=x.device)
    for j in range(top_k_index.shape[1]):
        held = top_k_index[:, j] < gate_up_i.shape[0]
        e = torch.where(held, top_k_index[:, j], 0).long()
        l3 = lam.reshape(t, 1, 1)
        gu = (1.0 - l3) * gate_up_i[e].double() + l3 * gate_up_t[e].double()  # [T, 2I, H]
        dn = (1.0 - l3) * down_i[e].double() + l3 * down_t[e].double()  # [T, H, I]
        gate, up = torch.einsum("toh,th->to", gu, x.double()).chunk(2, dim=-1)
        y = torch.einsum("thi,ti->th", dn, act_fn(gate) * up)
        out += torch.where(held, top_k_weights[:, j].double(), 0.0).unsqueeze(-1) * y
    return out
