"""Public functional op of the interpolated mixture-of-experts MLP (fused experts stored as
gate_up [E, 2I, H] and down [E, H, I], as transformers holds them), with each token's own λ:

  y_t = sum_j w_tj · down_e(λ_t) · (act(gate_e(λ_t) x_t) * up_e(λ_t) x_t),  e = top_k_index[t, j],
  W(λ) = (1-λ)·W_I + λ·W_T for every one of the three projections.

Backends as for `interp_linear` (`dami_kernels.ops.common.backend`): "triton" runs the grouped dual-weight
kernel (`launch.py`), "torch" the per-expert loop (`torch_path.py`). When autograd needs a graph, the
torch formulation runs (it is differentiable; the grouped kernel has no backward yet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dami_kernels.ops.common.backend import resolve_backend
from dami_kernels.ops.common.checks import SUPPORTED_DTYPES, TORCH_ONLY_DTYPES, check_lambda_value
from dami_kernels.ops.interp_experts.torch_path import interp_experts_torch


def _check(x, gate_up_i, gate_up_t, down_i, down_t, top_k_index, top_k_weights, allow_float64: bool) -> None:
    """Raise ValueError, naming the argument, for bad shapes, dtypes or devices."""
    named = (
        ("x", x),
        ("gate_up_i", gate_up_i),
        ("gate_up_t", gate_up_t),
        ("down_i", down_i),
        ("down_t", down_t),
        ("top_k_index", top_k_index),
        ("top_k_weights", top_k_weights),
    )
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if x.dtype not in SUPPORTED_DTYPES + (TORCH_ONLY_DTYPES if allow_float64 else ()):
        raise ValueError(
            f"x has dtype {x.dtype}; supported: float32, float16, bfloat16"
            f"{'' if allow_float64 else ' (float64 only with backend=torch)'}"
        )
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [T, H] (tokens flattened), got shape {tuple(x.shape)}")
    t, h = x.shape
    if gate_up_i.dim() != 3 or gate_up_i.shape[2] != h or gate_up_i.shape[1] % 2:
        raise ValueError(f"gate_up_i must be [E, 2I, H={h}], got shape {tuple(gate_up_i.shape)}")
    e, two_i, _ = gate_up_i.shape
    if tuple(down_i.shape) != (e, h, two_i // 2):
        raise ValueError(f"down_i must be [E={e}, H={h}, I={two_i // 2}], got shape {tuple(down_i.shape)}")
    for name, a, b in (("gate_up_t", gate_up_t, gate_up_i), ("down_t", down_t, down_i)):
        if a.shape != b.shape:
            raise ValueError(f"{name} has shape {tuple(a.shape)} but its Instruct side has {tuple(b.shape)}")
    for name, w in named[1:5]:
        if w.dtype != x.dtype:
            raise ValueError(f"{name} has dtype {w.dtype} but x has {x.dtype}; cast them to one dtype")
    if top_k_index.dim() != 2 or top_k_index.shape[0] != t or top_k_index.is_floating_point():
        raise ValueError(
            f"top_k_index must be an integer tensor [T={t}, k], got {top_k_index.dtype} {tuple(top_k_index.shape)}"
        )
    if top_k_weights.shape != top_k_index.shape or not top_k_weights.is_floating_point():
        raise ValueError(
            f"top_k_weights must be a float tensor of top_k_index's shape {tuple(top_k_index.shape)}, "
            f"got {top_k_weights.dtype} {tuple(top_k_weights.shape)}"
        )


def lam_tokens_form(lam, t: int, device) -> tuple[torch.Tensor, int, float | None]:
    """(λ fp32 [S] on device, rows_per_lam, the shared λ if λ was a number) for T tokens. lam: a number,
    a 0-d tensor, [T] (per token) or [S] with T divisible by S (per sequence of T/S tokens)."""
    if isinstance(lam, torch.Tensor):
        if lam.dim() > 1:
            raise ValueError(f"lam must be a number, a 0-d tensor or 1-D [T] / [S], got shape {tuple(lam.shape)}")
        if lam.device != device:
            raise ValueError(f"lam is on {lam.device} but x is on {device}")
        vec = lam.reshape(-1).to(torch.float32).contiguous()
        s = vec.numel()
        if s == 0 or (s > 1 and t % s):
            raise ValueError(
                f"lam holds {s} values; give one per token (T={t}), one per sequence (a divisor of T) or a scalar"
            )
        return vec, (max(t // s, 1) if s > 1 else max(t, 1)), None
    return torch.full((1,), float(lam), dtype=torch.float32, device=device), max(t, 1), float(lam)


def interp_experts(
    x,
    gate_up_i,
    gate_up_t,
    down_i,
    down_t,
    top_k_index,
    top_k_weights,
    lam,
    *,
    act_fn=F.silu,
    backend: str | None = None,
    check_finite: bool = True,
) -> torch.Tensor:
    """Interpolated experts MLP (formula in the module docstring). x [T, H]; gate_up_i/_t [E, 2I, H];
    down_i/_t [E, H, I]; top_k_index [T, k] (int, values in [0, E]; E marks an expert held elsewhere and
    adds nothing); top_k_weights [T, k]; lam: a number, a 0-d tensor, [T] per token or [S] per sequence
    of T/S consecutive tokens. act_fn: the activation between gate and up (transformers' act_fn).
    Returns [T, H] in x's dtype. Raises ValueError naming the argument on bad inputs or non-finite λ."""
    name = resolve_backend(backend, x.device) if isinstance(x, torch.Tensor) else "torch"
    _check(x, gate_up_i, gate_up_t, down_i, down_t, top_k_index, top_k_weights, name == "torch")
    if isinstance(lam, torch.Tensor) and check_finite:
        check_lambda_value(lam)
    elif not isinstance(lam, torch.Tensor):
        check_lambda_value(lam)
    lam_vec, rows_per_lam, lam_value = lam_tokens_form(lam, x.shape[0], x.device)
    return interp_experts_rows(
        x,
        gate_up_i,
        gate_up_t,
        down_i,
        down_t,
        top_k_index,
        top_k_weights,
        lam_vec,
        rows_per_lam,
        lam_value,
        act_fn,
        name,
    )


def interp_experts_rows(
    x,
    gate_up_i,
    gate_up_t,
    down_i,
    down_t,
    top_k_index,
    top_k_weights,
    lam: torch.Tensor,
    rows_per_lam: int,
    lam_value: float | None,
    act_fn,
    backend: str,
) -> torch.Tensor:
    """The layers' entry (no checks): lam fp32 [S] on x's device, token t reads lam[t // rows_per_lam];
    lam_value: the λ every token shares when known on the host (None under torch.compile); backend:
    "triton" or "torch", resolved."""
    needs_graph = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, gate_up_i, gate_up_t, down_i, down_t, top_k_weights, lam)
    )
    if backend == "triton" and not needs_graph:
        from dami_kernels.ops.interp_experts.launch import interp_experts_triton

        return interp_experts_triton(
            x, gate_up_i, gate_up_t, down_i, down_t, top_k_index, top_k_weights, lam, rows_per_lam, act_fn
        )
    lam_tokens = None
    if lam_value is None:
        t = x.shape[0]
        lam_tokens = lam.expand(t) if lam.numel() == 1 else lam.repeat_interleave(rows_per_lam)[:t]
    return interp_experts_torch(
        x, gate_up_i, gate_up_t, down_i, down_t, top_k_index, top_k_weights, lam_tokens, act_fn, lam_value
    )
