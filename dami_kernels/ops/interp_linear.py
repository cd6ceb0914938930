"""Public functional op: y = (1-λ_r)(W_I x_r + b_I) + λ_r(W_T x_r + b_T) for every row r."""
from __future__ import annotations

import torch

from dami_kernels.ops.backend import resolve_backend
from dami_kernels.ops.checks import normalize_args
from dami_kernels.ops.reference import interp_linear_rows_ref


def interp_linear(
    x: torch.Tensor,
    w_i: torch.Tensor,
    w_t: torch.Tensor,
    lam,
    bias_i: torch.Tensor | None = None,
    bias_t: torch.Tensor | None = None,
    *,
    backend: str | None = None,
    check_finite: bool = True,
) -> torch.Tensor:
    """Interpolated linear layer for a batch whose rows carry their own λ.

    x [..., K] (any leading dims, may be non-contiguous); w_i, w_t [N, K]; bias_i, bias_t [N] or None.
    lam: a Python float, a 0-d tensor, a tensor of shape x.shape[:-1] (per row) or x.shape[:1] (per
    sequence, broadcast over the other leading dims). Any finite λ is computed (extrapolation too).
    Returns [..., N] in x's dtype, accumulated in fp32.

    backend: "auto" (default, or $DAMI_BACKEND), "triton" or "torch"; see `dami_kernels.ops.backend`.
    check_finite: check a tensor λ for NaN/inf (a host sync on CUDA; skipped automatically under
    torch.compile and CUDA-graph capture). Layers whose λ was validated when set pass False.
    Raises ValueError naming the argument on bad shapes, dtypes, devices or non-finite λ.
    """
    args = normalize_args(x, w_i, w_t, lam, bias_i, bias_t, check_finite=check_finite)
    if args.x2d.shape[0] == 0:
        return x.new_empty(args.out_shape)
    if resolve_backend(backend, x.device) == "torch":
        y = interp_linear_rows_ref(
            args.x2d, w_i, w_t, args.lam_rows, bias_i, bias_t, lam_scalar=args.lam_scalar
        )
    else:
        from dami_kernels.ops.triton_launch import interp_linear_triton

        y = interp_linear_triton(args.x2d, w_i, w_t, args.lam_rows, bias_i, bias_t, args.seg_len)
    return y.reshape(args.out_shape)
