"""Public functional op: y = (1-λ_r)(W_I x_r + b_I) + λ_r(W_T x_r + b_T) for every row r.

`interp_linear` validates everything (the public API). `interp_linear_layer` is the lean entry that the
interpolating layers call on every forward: their weights were checked when the pair was built and λ
when it was set, so it only reshapes and dispatches (host time matters at decode).
"""

from __future__ import annotations

import torch

from dami_kernels.ops.common.backend import resolve_backend
from dami_kernels.ops.common.checks import lam_per_row, normalize_args
from dami_kernels.ops.interp_linear.torch_path import interp_linear_torch


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
    Returns [..., N] in x's dtype, accumulated in fp32 (fp32 inputs: exact fp32 products, TF32 only
    when enabled through torch's own switch). Differentiable on both backends (x, weights, biases, λ).

    backend: "auto" (default, or $DAMI_BACKEND), "triton" or "torch"; see `dami_kernels.ops.common.backend`.
    float64 inputs run on the torch backend only.
    check_finite: check a tensor λ for NaN/inf (a host sync on CUDA; skipped automatically under
    torch.compile and CUDA-graph capture). Layers whose λ was validated when set pass False.
    Raises ValueError naming the argument on bad shapes, dtypes, devices or non-finite λ.

    Examples::

        >>> import torch
        >>> from dami_kernels.ops import interp_linear
        >>> x = torch.ones(2, 3)                                   # M = 2 rows, K = 3
        >>> w_i, w_t = torch.zeros(4, 3), torch.full((4, 3), 2.0)  # N = 4
        >>> interp_linear(x, w_i, w_t, torch.tensor([0.0, 0.5]))   # row 0 at λ = 0, row 1 at λ = 0.5
        tensor([[0., 0., 0., 0.],
                [3., 3., 3., 3.]])
        >>> lam = torch.tensor([0.25, 1.0])
        >>> y = interp_linear(x, w_i, w_t, lam)
        >>> torch.allclose(y, (1 - lam[:, None]) * (x @ w_i.T) + lam[:, None] * (x @ w_t.T))
        True
    """
    name = resolve_backend(backend, x.device) if isinstance(x, torch.Tensor) else "torch"
    args = normalize_args(x, w_i, w_t, lam, bias_i, bias_t, check_finite=check_finite, allow_float64=name == "torch")
    if args.x2d.shape[0] == 0:
        return x.new_empty(args.out_shape)
    if name == "torch":
        y = interp_linear_torch(args.x2d, w_i, w_t, args.lam_rows(), bias_i, bias_t, lam_value=args.lam_scalar)
    else:
        y = _triton_entry()(args.x2d, w_i, w_t, args.lam, bias_i, bias_t, args.seg_len, args.rows_per_lam)
    return y.reshape(args.out_shape)


_TRITON_ENTRY = None


def _triton_entry():
    """`custom_op.interp_linear_triton`, imported on first use (triton is optional)."""
    global _TRITON_ENTRY
    if _TRITON_ENTRY is None:
        from dami_kernels.ops.interp_linear.custom_op import interp_linear_triton

        _TRITON_ENTRY = interp_linear_triton
    return _TRITON_ENTRY


def interp_linear_layer(
    x: torch.Tensor,
    w_i: torch.Tensor,
    w_t: torch.Tensor,
    lam: torch.Tensor,
    bias_i: torch.Tensor | None,
    bias_t: torch.Tensor | None,
    lam_value: float | None,
    backend: str,
) -> torch.Tensor:
    """The layers' entry. x [B, ..., K]; lam fp32 contiguous on x's device, [B] (per sequence) or [1]
    (one λ for every row); lam_value: the λ every row shares when known on the host (None otherwise,
    and always None under torch.compile so that graphs never depend on λ's value); backend: "triton"
    or "torch", already resolved (`resolve_backend`).
    Returns [B, ..., N]. Only the cheap structural checks are made here (every statement counts: this
    runs once per linear per decode step)."""
    k = w_i.shape[1]
    if x.shape[-1] != k or x.dtype != w_i.dtype or k == 0:
        # Rare: the public op gives the precise error message (or the K = 0 result).
        return interp_linear(
            x,
            w_i,
            w_t,
            lam if lam.shape[0] > 1 else lam.reshape(()),
            bias_i,
            bias_t,
            backend=backend,
            check_finite=False,
        )
    m = x.numel() // k
    if m == 0:
        return x.new_empty(x.shape[:-1] + (w_i.shape[0],))
    seg_len, rows_per_lam = _segments(m, lam, lam_value)
    if backend == "triton":
        return _triton_entry()(x, w_i, w_t, lam, bias_i, bias_t, seg_len, rows_per_lam)
    if lam_value is not None:  # every path for a shared λ takes x with its leading dims as is
        return interp_linear_torch(x, w_i, w_t, None, bias_i, bias_t, lam_value)
    y = interp_linear_torch(x.reshape(-1, k), w_i, w_t, lam_per_row(lam, rows_per_lam, m), bias_i, bias_t)
    return y.reshape(x.shape[:-1] + (w_i.shape[0],))


def _segments(m: int, lam: torch.Tensor, lam_value: float | None) -> tuple[int, int]:
    """(seg_len, rows_per_lam) of the layer entry for M rows: rows per λ value, and rows per segment
    known to share one λ (all M when the host knows λ is shared)."""
    rows_per_lam = max(m // lam.shape[0], 1) if lam.shape[0] > 1 else m
    return (m if lam_value is not None else rows_per_lam), rows_per_lam


def layer_memo(
    x: torch.Tensor, w_i: torch.Tensor, w_t: torch.Tensor, lam: torch.Tensor, bias_i, bias_t, lam_value: float | None
):
    """The Triton launch memo (`launch.LaunchMemo`) of the call `interp_linear_layer(x, ..., lam_value,
    "triton")` just made, for an eager layer to replay on its next call; None where it cannot."""
    k = w_i.shape[1]
    if x.shape[-1] != k or x.dtype != w_i.dtype or k == 0 or x.numel() == 0:
        return None
    from dami_kernels.ops.interp_linear.launch import make_memo

    m = x.numel() // k
    seg_len, rows_per_lam = _segments(m, lam, lam_value)
    return make_memo(x, w_i, w_t, lam, bias_i, bias_t, seg_len, rows_per_lam, lam_value is not None)
