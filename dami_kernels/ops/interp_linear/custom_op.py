"""The `torch.library` custom op `dami_kernels::interp_linear_rows` (with autograd), and the triton backend's
entry point.

The op has a fake (meta) implementation, so `torch.compile` traces through it and CUDA graphs capture it; λ is
read from a device tensor inside the kernel (no host sync). In eager mode without autograd,
`interp_linear_triton` calls the launcher directly (the op's dispatch costs more host time than the rest of the
call).
"""

from __future__ import annotations

import torch

from dami_kernels.ops.common.checks import lam_per_row
from dami_kernels.ops.interp_linear.launch import launch_interp_linear


@torch.library.custom_op("dami_kernels::interp_linear_rows", mutates_args=())
def interp_linear_rows_op(
    x2d: torch.Tensor,
    w_i: torch.Tensor,
    w_t: torch.Tensor,
    lam: torch.Tensor,
    bias_i: torch.Tensor | None,
    bias_t: torch.Tensor | None,
    seg_len: int,
    rows_per_lam: int,
) -> torch.Tensor:
    """Custom-op wrapper of `launch_interp_linear`; shapes as there. Returns a new [M, N] tensor."""
    return launch_interp_linear(x2d, w_i, w_t, lam, bias_i, bias_t, seg_len, rows_per_lam=rows_per_lam)


@interp_linear_rows_op.register_fake
def _interp_linear_rows_fake(x2d, w_i, w_t, lam, bias_i, bias_t, seg_len, rows_per_lam):
    return x2d.new_empty((x2d.shape[0], w_i.shape[0]))


def _setup_context(ctx, inputs, output):
    x2d, w_i, w_t, lam, bias_i, bias_t, seg_len, rows_per_lam = inputs
    ctx.save_for_backward(x2d, w_i, w_t, lam, bias_i, bias_t)
    ctx.seg_len, ctx.rows_per_lam = seg_len, rows_per_lam


def _backward(ctx, dy):
    """dx = (1-λ) dy W_I + λ dy W_T (the same fused kernel on the transposed weights); dλ_s = sum over
    the rows r of s of dy_r · (y_T,r - y_I,r); dW_I = ((1-λ) dy)^T x, dW_T = (λ dy)^T x; db likewise."""
    x2d, w_i, w_t, lam, bias_i, bias_t = ctx.saved_tensors
    rpl = ctx.rows_per_lam
    m = x2d.shape[0]
    need = ctx.needs_input_grad
    dx = dw_i = dw_t = dlam = db_i = db_t = None
    if need[0]:
        dx = interp_linear_rows_op(dy.contiguous(), w_i.t(), w_t.t(), lam, None, None, ctx.seg_len, rpl)
    lam_r = lam_per_row(lam, rpl, m).reshape(m, 1)
    dy32 = dy.float()
    if need[1] or need[4]:
        g_i = (1.0 - lam_r) * dy32
        dw_i = (g_i.t() @ x2d.float()).to(w_i.dtype) if need[1] else None
        db_i = g_i.sum(0).to(bias_i.dtype) if need[4] else None
    if need[2] or need[5]:
        g_t = lam_r * dy32
        dw_t = (g_t.t() @ x2d.float()).to(w_t.dtype) if need[2] else None
        db_t = g_t.sum(0).to(bias_t.dtype) if need[5] else None
    if need[3]:
        diff = x2d.float() @ (w_t.float() - w_i.float()).t()
        if bias_i is not None:
            diff = diff + (bias_t.float() - bias_i.float())
        per_row = (dy32 * diff).sum(1)
        if lam.numel() == 1:
            dlam = per_row.sum().reshape(lam.shape)
        else:
            index = torch.arange(m, device=lam.device) // rpl
            dlam = torch.zeros_like(lam, dtype=torch.float32).index_add_(0, index, per_row).to(lam.dtype)
    return dx, dw_i, dw_t, dlam, db_i, db_t, None, None


interp_linear_rows_op.register_autograd(_backward, setup_context=_setup_context)


def interp_linear_triton(x, w_i, w_t, lam, bias_i, bias_t, seg_len: int, rows_per_lam: int) -> torch.Tensor:
    """Entry point of the triton backend. x [..., K] (M = all leading dims); returns [..., N].

    Through the custom op when tracing (torch.compile) or when autograd needs a graph; otherwise the
    launcher is called directly, which saves the op dispatch (most of the host time of a decode call).
    """
    if torch.compiler.is_compiling() or (
        torch.is_grad_enabled()
        and (
            x.requires_grad
            or w_i.requires_grad
            or w_t.requires_grad
            or lam.requires_grad
            or (bias_i is not None and (bias_i.requires_grad or bias_t.requires_grad))
        )
    ):
        k = x.shape[-1]
        y = interp_linear_rows_op(x.reshape(-1, k), w_i, w_t, lam, bias_i, bias_t, seg_len, rows_per_lam)
        return y.reshape(x.shape[:-1] + (w_i.shape[0],))
    return launch_interp_linear(
        x, w_i, w_t, lam, bias_i, bias_t, seg_len, None, True, True, None, rows_per_lam=rows_per_lam
    )
