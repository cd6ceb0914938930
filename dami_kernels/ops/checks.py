"""Argument checks for `interp_linear`, shared by every backend.

`normalize_args` validates the public arguments and returns the canonical form that the kernels take:
a 2-D view of x, per-row λ as an fp32 tensor [M] on x's device, and the segment length (rows that are
known to share one λ because λ was given per sequence or as a scalar).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class LinearArgs:
    """Canonical arguments. x2d [M, K]; lam_rows [M] fp32; seg_len: rows per uniform-λ segment."""

    x2d: torch.Tensor
    w_i: torch.Tensor
    w_t: torch.Tensor
    bias_i: torch.Tensor | None
    bias_t: torch.Tensor | None
    lam_rows: torch.Tensor
    lam_scalar: float | None  # set when λ was a Python number
    seg_len: int
    out_shape: tuple[int, ...]


def _is_capturing_or_compiling() -> bool:
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def check_lambda_value(lam, name: str = "lam") -> None:
    """Raise ValueError if λ (number or tensor) holds a non-finite value."""
    if isinstance(lam, torch.Tensor):
        if not lam.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {lam.dtype}")
        if _is_capturing_or_compiling():
            return  # value checks would force a host sync; λ was validated when it was set
        if not bool(torch.isfinite(lam).all()):
            raise ValueError(f"{name} must be finite, got a tensor with NaN or inf values")
    else:
        if isinstance(lam, bool) or not isinstance(lam, Real):
            raise ValueError(f"{name} must be a float or a tensor, got {type(lam).__name__}")
        if not math.isfinite(float(lam)):
            raise ValueError(f"{name} must be finite, got {lam}")


def normalize_args(x, w_i, w_t, lam, bias_i=None, bias_t=None, check_finite: bool = True) -> LinearArgs:
    """Validate `interp_linear` arguments; every error is a ValueError that names the argument."""
    for name, t in (("x", x), ("w_i", w_i), ("w_t", w_t)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x has dtype {x.dtype}; supported: float32, float16, bfloat16")
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension [..., K]")
    if w_i.dim() != 2:
        raise ValueError(f"w_i must be 2-D [N, K], got shape {tuple(w_i.shape)}")
    if w_t.shape != w_i.shape:
        raise ValueError(f"w_t has shape {tuple(w_t.shape)} but w_i has {tuple(w_i.shape)}")
    n, k = w_i.shape
    if x.shape[-1] != k:
        raise ValueError(f"x has K={x.shape[-1]} in its last dim but w_i is [N={n}, K={k}]")
    for name, t in (("w_i", w_i), ("w_t", w_t)):
        if t.dtype != x.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but x has {x.dtype}; cast them to one dtype")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if (bias_i is None) != (bias_t is None):
        raise ValueError("bias_i and bias_t must be given together (or neither)")
    for name, b in (("bias_i", bias_i), ("bias_t", bias_t)):
        if b is None:
            continue
        if not isinstance(b, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(b).__name__}")
        if b.shape != (n,):
            raise ValueError(f"{name} must have shape [N={n}], got {tuple(b.shape)}")
        if b.dtype != x.dtype:
            raise ValueError(f"{name} has dtype {b.dtype} but x has {x.dtype}")
        if b.device != x.device:
            raise ValueError(f"{name} is on {b.device} but x is on {x.device}")

    lead = tuple(x.shape[:-1])
    m = math.prod(lead)
    x2d = x.reshape(m, k)
    lam_scalar = None
    if isinstance(lam, torch.Tensor):
        if check_finite:
            check_lambda_value(lam)
        elif not lam.is_floating_point():
            raise ValueError(f"lam must be a floating-point tensor, got dtype {lam.dtype}")
        if lam.device != x.device:
            raise ValueError(f"lam is on {lam.device} but x is on {x.device}")
        if lam.dim() == 0:
            lam_rows = lam.reshape(1).to(torch.float32).expand(m)
            seg_len = max(m, 1)
        elif tuple(lam.shape) == lead:
            lam_rows = lam.reshape(m).to(torch.float32)
            seg_len = 1  # per-row λ: no segment structure is known
        elif len(lead) >= 1 and tuple(lam.shape) == lead[:1]:
            rows_per_seq = m // lead[0] if lead[0] else 0
            lam_rows = lam.to(torch.float32).reshape(-1, 1).expand(lead[0], rows_per_seq).reshape(m)
            seg_len = max(rows_per_seq, 1)
        else:
            raise ValueError(
                f"lam has shape {tuple(lam.shape)}; expected a scalar, x.shape[:-1]={lead} (per row) "
                f"or x.shape[:1]={lead[:1]} (per sequence)"
            )
    else:
        check_lambda_value(lam)
        lam_scalar = float(lam)
        lam_rows = torch.full((m,), lam_scalar, dtype=torch.float32, device=x.device)
        seg_len = max(m, 1)
    return LinearArgs(
        x2d, w_i, w_t, bias_i, bias_t, lam_rows.contiguous(), lam_scalar, seg_len, lead + (n,)
    )
