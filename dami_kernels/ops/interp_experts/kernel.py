"""Triton grouped dual-weight kernel for the interpolated experts: out_p = x_p · W_e(λ_p)^T for rows p
sorted by expert e, each row with its own token's λ.

One program computes one (row tile, column tile, K-split) of one expert. The rows of a tile all
belong to that expert (the tile table, built on the device by `launch.tile_table`, never lets a
tile straddle two experts), and the same four per-tile paths as the dense kernel
(`interp_linear.kernel.interp_linear_kernel`; both are built from the K-loop helpers in `common.tiles`) are
chosen at run time from the λ values of the tile's rows: W_I only (all λ = 0) or W_T only (all λ = 1);
blend in registers (one shared λ, ONE product); dual accumulator (mixed λ); split-K (SPLIT_K > 1: fp32 partials that
`splitk_reduce_kernel` sums). Rows are sorted stably, so an expert's rows stay in token order and the
tokens of one sequence (one λ) stay contiguous.
"""

import triton
import triton.language as tl

from dami_kernels.ops.common.tiles import mm_blend, mm_dual, mm_one, store_tile


@triton.jit(do_not_specialize=["P", "NUM_TILES", "ROWS_PER_LAM", "stride_xm", "stride_os"])
def interp_grouped_kernel(
    x_ptr,
    wi_ptr,
    wt_ptr,
    lam_ptr,
    out_ptr,
    tiles_ptr,
    src_ptr,
    tok_ptr,
    dst_ptr,
    scale_ptr,
    path_ptr,
    P,
    N,
    K,
    NUM_TILES,
    K_PER_SPLIT,
    ROWS_PER_LAM,
    stride_xm,
    stride_xk,
    stride_we,
    stride_wn,
    stride_wk,
    stride_os,
    stride_om,
    stride_on,
    GATHER: tl.constexpr,
    SCATTER: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    SKIP: tl.constexpr,
    BLEND: tl.constexpr,
    UPCAST: tl.constexpr,
    RECORD_PATH: tl.constexpr,
    SWAP_AB: tl.constexpr,
    INT64: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Grid: (NUM_TILES * cdiv(N, BLOCK_N), SPLIT_K).

    x [*, K] (any strides); W_I/W_T [E, N, K] (same strides); lam fp32, token t reads
    lam[t // ROWS_PER_LAM]; tiles int32 [NUM_TILES, 3] = (expert, first row, end row) of each row tile
    of the P sorted rows (first >= end: an unused tile, which exits at once); src/tok/dst int32 [P]:
    the x row (GATHER; else row p itself), the token (for λ) and the output row (SCATTER; else p) of
    sorted row p; scale [P] fp32: a factor per row applied in the epilogue (HAS_SCALE: the routing
    weight); out [SPLIT_K, *, N] (stride_os ignored when SPLIT_K == 1). RECORD_PATH: write the path
    each program took to path_ptr [grid0, SPLIT_K] (-2: unused tile, 0: W_I only, 1: W_T only, 2:
    blend, 3: dual). SKIP/BLEND/UPCAST/SWAP_AB/INT64/PRECISION as in `interp_linear_kernel`.
    Run-time sizes (P, the tile count) are not specialized: a new batch never recompiles.
    """
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    expert = tl.load(tiles_ptr + pid_m * 3)
    row_lo = tl.load(tiles_ptr + pid_m * 3 + 1)
    row_hi = tl.load(tiles_ptr + pid_m * 3 + 2)
    if row_lo >= row_hi:
        if RECORD_PATH:
            tl.store(path_ptr + pid * tl.num_programs(1) + pid_k, -2)
        return

    rows = row_lo + tl.arange(0, BLOCK_M)
    row_mask = rows < row_hi
    rows_c = tl.where(row_mask, rows, row_lo)  # clamped: their results are never stored
    tok = tl.load(tok_ptr + rows_c)
    if GATHER:
        src = tl.load(src_ptr + rows_c)
    else:
        src = rows_c
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    cols_c = tl.where(col_mask, cols, 0)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = min(k_lo + K_PER_SPLIT, K)

    lam = tl.load(lam_ptr + tok // ROWS_PER_LAM, mask=row_mask, other=0.0)
    lam_lo = tl.min(tl.where(row_mask, lam, float("inf")), axis=0)
    lam_hi = tl.max(tl.where(row_mask, lam, float("-inf")), axis=0)

    rk = k_lo + tl.arange(0, BLOCK_K)
    w_base = expert * stride_we
    if INT64:
        src = src.to(tl.int64)
        cols_c = cols_c.to(tl.int64)
        rk = rk.to(tl.int64)
        w_base = expert.to(tl.int64) * stride_we
    if SWAP_AB:
        x_ptrs = x_ptr + src[None, :] * stride_xm + rk[:, None] * stride_xk
        w_offs = w_base + cols_c[:, None] * stride_wn + rk[None, :] * stride_wk
    else:
        x_ptrs = x_ptr + src[:, None] * stride_xm + rk[None, :] * stride_xk
        w_offs = w_base + cols_c[None, :] * stride_wn + rk[:, None] * stride_wk

    path = tl.full((), 3, tl.int32)
    if SKIP and (lam_hi == 0.0) & (lam_lo == 0.0):
        path = tl.full((), 0, tl.int32)
        out = mm_one(
            x_ptrs,
            wi_ptr + w_offs,
            k_lo,
            k_hi,
            stride_xk,
            stride_wk,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
            SWAP_AB,
            UPCAST,
            PRECISION,
        )
    elif SKIP and (lam_hi == 1.0) & (lam_lo == 1.0):
        path = tl.full((), 1, tl.int32)
        out = mm_one(
            x_ptrs,
            wt_ptr + w_offs,
            k_lo,
            k_hi,
            stride_xk,
            stride_wk,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
            SWAP_AB,
            UPCAST,
            PRECISION,
        )
    elif BLEND and (lam_lo == lam_hi):
        path = tl.full((), 2, tl.int32)
        out = mm_blend(
            x_ptrs,
            wi_ptr + w_offs,
            wt_ptr + w_offs,
            lam_lo,
            k_lo,
            k_hi,
            stride_xk,
            stride_wk,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
            SWAP_AB,
            UPCAST,
            PRECISION,
        )
    else:
        acc_i, acc_t = mm_dual(
            x_ptrs,
            wi_ptr + w_offs,
            wt_ptr + w_offs,
            k_lo,
            k_hi,
            stride_xk,
            stride_wk,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
            SWAP_AB,
            UPCAST,
            PRECISION,
        )
        lam2 = lam[:, None]
        out = (1.0 - lam2) * acc_i + lam2 * acc_t
    if HAS_SCALE:
        out = out * tl.load(scale_ptr + rows_c, mask=row_mask, other=0.0).to(tl.float32)[:, None]

    if SCATTER:
        dst = tl.load(dst_ptr + rows_c)
    else:
        dst = rows_c
    store_tile(
        out_ptr,
        out,
        dst,
        cols,
        pid_k,
        stride_os,
        stride_om,
        stride_on,
        row_mask[:, None] & col_mask[None, :],
        path_ptr,
        pid,
        path,
        INT64,
        RECORD_PATH,
    )
