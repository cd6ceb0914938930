"""Launcher and `torch.library` custom op for the Triton interpolated-linear kernel.

The custom op `dami_kernels::interp_linear_rows` has a fake (meta) implementation, so `torch.compile`
traces through it and CUDA graphs capture it; λ is read from a device tensor inside the kernel (no host
sync). Tile configs are chosen per (N, K, M bucket, dtype, device) and cached (see `configs.py`), so a
decode loop whose M grows never re-tunes.
"""
from __future__ import annotations

import torch
import triton

from dami_kernels.ops.backend import interpreting
from dami_kernels.ops.configs import KernelConfig, pick_config
from dami_kernels.ops.triton_kernels import interp_linear_kernel


def _alloc(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Output allocation (the tests replace it with a NaN-filled one to catch unwritten tiles)."""
    return torch.empty(shape, dtype=dtype, device=device)


def launch_interp_linear(
    x2d: torch.Tensor,
    w_i: torch.Tensor,
    w_t: torch.Tensor,
    lam_rows: torch.Tensor,
    bias_i: torch.Tensor | None,
    bias_t: torch.Tensor | None,
    seg_len: int,
    config: KernelConfig | None = None,
    skip: bool = True,
    blend: bool = True,
    record_path: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the kernel. x2d [M, K]; w [N, K]; lam_rows [M] fp32 contiguous; biases [N] | None.

    seg_len: rows per segment that shares one λ (M when λ is a scalar; 1 when nothing is known).
    config: a fixed tile config (tests and benchmarks); default `pick_config`. skip/blend switch the
    endpoint-skip and blend-in-registers paths (tests turn them off to reach the dual path).
    record_path: an int32 tensor of at least grid0 * SPLIT_K elements that receives the path each
    program took (0: W_I only, 1: W_T only, 2: blend, 3: dual); tests use it.
    Returns [M, N] in x's dtype.
    """
    m, k = x2d.shape
    n = w_i.shape[0]
    if w_t.stride() != w_i.stride():
        w_t = w_t.contiguous()
        w_i = w_i.contiguous()
    cfg = config or pick_config(m, n, k, x2d.dtype, x2d.device, seg_len)
    # Segments: row tiles follow sequence boundaries when a segment fills most of its tiles.
    if cfg.follow_segments(seg_len, m):
        seg, tiles_per_seg = seg_len, triton.cdiv(seg_len, cfg.block_m)
        num_pid_m = triton.cdiv(m, seg_len) * tiles_per_seg
    else:
        seg, tiles_per_seg = m, triton.cdiv(m, cfg.block_m)
        num_pid_m = tiles_per_seg
    split_k = max(1, min(cfg.split_k, triton.cdiv(k, cfg.block_k)))
    k_per_split = triton.cdiv(triton.cdiv(k, split_k), cfg.block_k) * cfg.block_k
    split_k = triton.cdiv(k, k_per_split)
    if split_k == 1:
        out = _alloc((1, m, n), x2d.dtype, x2d.device)
    else:
        out = _alloc((split_k, m, n), torch.float32, x2d.device)
    has_bias = bias_i is not None
    grid = (num_pid_m * triton.cdiv(n, cfg.block_n), split_k)
    if record_path is not None:
        record_path.resize_(grid[0] * grid[1]).fill_(-1)
    if has_bias:
        bias_i, bias_t = bias_i.contiguous(), bias_t.contiguous()
    interp_linear_kernel[grid](
        x2d, w_i, w_t, bias_i if has_bias else w_i, bias_t if has_bias else w_t, lam_rows, out,
        record_path if record_path is not None else lam_rows,
        m, n, k, seg, tiles_per_seg, num_pid_m, k_per_split,
        x2d.stride(0), x2d.stride(1), w_i.stride(0), w_i.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        HAS_BIAS=has_bias, SKIP=skip, BLEND=blend, RECORD_PATH=record_path is not None,
        SWAP_AB=cfg.swap_ab,
        UPCAST=interpreting() and x2d.dtype != torch.float32,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if split_k == 1:
        return out[0]
    return out.sum(0).to(x2d.dtype)


@torch.library.custom_op("dami_kernels::interp_linear_rows", mutates_args=())
def interp_linear_rows_op(
    x2d: torch.Tensor,
    w_i: torch.Tensor,
    w_t: torch.Tensor,
    lam_rows: torch.Tensor,
    bias_i: torch.Tensor | None,
    bias_t: torch.Tensor | None,
    seg_len: int,
) -> torch.Tensor:
    """Custom-op wrapper of `launch_interp_linear`; shapes as there. Returns a new [M, N] tensor."""
    return launch_interp_linear(x2d, w_i, w_t, lam_rows, bias_i, bias_t, seg_len)


@interp_linear_rows_op.register_fake
def _interp_linear_rows_fake(x2d, w_i, w_t, lam_rows, bias_i, bias_t, seg_len):
    return x2d.new_empty((x2d.shape[0], w_i.shape[0]))


def interp_linear_triton(x2d, w_i, w_t, lam_rows, bias_i, bias_t, seg_len: int) -> torch.Tensor:
    """Entry point used by `interp_linear` for the triton backend. Returns [M, N]."""
    return interp_linear_rows_op(x2d, w_i, w_t, lam_rows, bias_i, bias_t, seg_len)
