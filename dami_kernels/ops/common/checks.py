"""Argument checks for `interp_linear`, shared by every backend.

`normalize_args` validates the public arguments and returns the canonical form that the kernels take:
a 2-D view of x, λ as an fp32 vector [S] on x's device with `rows_per_lam` (row r uses
lam[r // rows_per_lam]: no copy per row is made), and the segment length (rows that are known to share
one λ because λ was given per sequence or as a scalar).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dami_kernels.validation import check_finite, real_number

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# float64 runs on the torch backend only (gradcheck and fp64 references); the kernels refuse it.
TORCH_ONLY_DTYPES = (torch.float64,)


@dataclass
class LinearArgs:
    """Canonical arguments. x2d [M, K]; lam [S] fp32 with row r at lam[r // rows_per_lam];
    seg_len: rows per uniform-λ segment."""

    x2d: torch.Tensor
    w_i: torch.Tensor
    w_t: torch.Tensor
    bias_i: torch.Tensor | None
    bias_t: torch.Tensor | None
    lam: torch.Tensor
    rows_per_lam: int
    lam_scalar: float | None  # set when λ was a Python number
    seg_len: int
    out_shape: tuple[int, ...]

    def lam_rows(self) -> torch.Tensor:
        """λ per row [M] (a view or, for per-sequence λ, a copy)."""
        return lam_per_row(self.lam, self.rows_per_lam, self.x2d.shape[0])


def lam_per_row(lam: torch.Tensor, rows_per_lam: int, m: int) -> torch.Tensor:
    """λ per row [M] from the canonical λ [S], where row r reads lam[r // rows_per_lam] (a view, or
    for several rows per λ a copy)."""
    if lam.numel() == 1:
        return lam.reshape(1).expand(m)
    if rows_per_lam == 1:
        return lam[:m]
    return lam.repeat_interleave(rows_per_lam)[:m]


def _is_capturing_or_compiling() -> bool:
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def check_lambda_value(lam, name: str = "lam") -> None:
    """Raise ValueError if λ (number or tensor) holds a non-finite value."""
    if isinstance(lam, torch.Tensor):
        if not lam.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {lam.dtype}")
        if lam.device.type == "meta":
            raise ValueError(f"{name} is on the meta device (it holds no values); move it to x's device")
        if _is_capturing_or_compiling():
            return  # value checks would force a host sync; λ was validated when it was set
        check_finite(lam, name, got="a tensor with NaN or inf values")
    else:
        check_finite(real_number(lam, name, "be a float or a tensor"), name, got=str(lam))


def _lam_dtype(x: torch.Tensor) -> torch.dtype:
    """λ is fp32 for the kernels; float64 inputs (torch backend) keep it in float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def normalize_args(
    x, w_i, w_t, lam, bias_i=None, bias_t=None, check_finite: bool = True, allow_float64: bool = False
) -> LinearArgs:
    """Validate `interp_linear` arguments; every error is a ValueError that names the argument.

    allow_float64: accept float64 (the torch backend; the kernels take fp32/fp16/bf16)."""
    for name, t in (("x", x), ("w_i", w_i), ("w_t", w_t)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dtype not in SUPPORTED_DTYPES + (TORCH_ONLY_DTYPES if allow_float64 else ()):
        extra = "" if allow_float64 else " (float64 only with backend='torch')"
        raise ValueError(f"x has dtype {x.dtype}; supported: float32, float16, bfloat16{extra}")
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
        if lam.device != x.device:
            raise ValueError(f"lam is on {lam.device} but x is on {x.device}")
        if check_finite:
            check_lambda_value(lam)
        elif not lam.is_floating_point():
            raise ValueError(f"lam must be a floating-point tensor, got dtype {lam.dtype}")
        if lam.dim() == 0:
            lam_vec, rows_per_lam, seg_len = lam.reshape(1), max(m, 1), max(m, 1)
        elif tuple(lam.shape) == lead:
            lam_vec, rows_per_lam, seg_len = lam.reshape(m), 1, 1  # per row: no segment structure known
        elif len(lead) >= 1 and tuple(lam.shape) == lead[:1]:
            rows_per_seq = max(m // lead[0] if lead[0] else 0, 1)
            lam_vec, rows_per_lam, seg_len = lam, rows_per_seq, rows_per_seq
        else:
            raise ValueError(
                f"lam has shape {tuple(lam.shape)}; expected a scalar, x.shape[:-1]={lead} (per row) "
                f"or x.shape[:1]={lead[:1]} (per sequence)"
            )
        lam_vec = lam_vec.to(_lam_dtype(x)).contiguous()
    else:
        check_lambda_value(lam)
        lam_scalar = float(lam)
        lam_vec = torch.full((1,), lam_scalar, dtype=_lam_dtype(x), device=x.device)
        rows_per_lam = seg_len = max(m, 1)
    return LinearArgs(x2d, w_i, w_t, bias_i, bias_t, lam_vec, rows_per_lam, lam_scalar, seg_len, lead + (n,))
