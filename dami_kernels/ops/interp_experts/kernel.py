"""Triton grouped dual-weight kernel for the interpolated experts: out_p = x_p · W_e(λ_p)^T for rows p
sorted by expert e, each row with its own token's λ.

One program computes one (row tile, column tile, K-split) of one expert. The rows of a tile all
belong to that expert (the tile table, built on the device by `launch.tile_table`, never lets a
tile straddle two experts), and the same four per-tile paths as the dense kernel
(`interp_linear.kernel.interp_linear_kernel`; both are built from the K-loop helpers in `common.tiles`) are
chosen at run time from the λ values of the tile's rows: W_I only (all λ = 0) or W_T only (all λ = 1);
blend in registers (one shared λ, ONE product); dual accumulator (mixed λ); split-K (SPLIT: fp32 partials in a
workspace that the last program of a tile sums in split order, inside the kernel). Rows are sorted stably, so an
expert's rows stay in token order, and the tile table (`route.route_kernel`) starts a new tile at every change of
sequence where λ is per sequence, so a tile holds rows of one λ where the routing allows.

ACT (the gate_up launch): the program's BLOCK_N weight rows interleave gate row c and up row I + c (c in the
program's BLOCK_N / 2 hidden columns), so the epilogue computes silu(gate) * up in fp32 and stores [BLOCK_M,
BLOCK_N / 2] of the hidden state (no [P, 2I] intermediate, no activation launch).
"""

import triton
import triton.language as tl

from dami_kernels.ops.common.tiles import last_split, mm_paths, sum_splits


@triton.jit
def _epilogue(
    out_ptr,
    acc,
    rows_c,
    dst,
    scale_ptr,
    row_mask,
    pid_n,
    N,
    stride_om,
    stride_on,
    HAS_SCALE: tl.constexpr,
    ACT: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Store a finished fp32 tile: ACT: silu(gate) * up of the interleaved columns at hidden columns
    pid_n * BLOCK_N / 2 + [0, BLOCK_N / 2) of row dst (N: the hidden width I); else the tile times the row's
    scale (HAS_SCALE) at columns pid_n * BLOCK_N + [0, BLOCK_N) of row dst (N: the output width)."""
    if HAS_SCALE:
        acc = acc * tl.load(scale_ptr + rows_c, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    if ACT:
        gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))
        acc = gate / (1.0 + tl.exp(-gate)) * up
        cols = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    else:
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if INT64:
        dst = dst.to(tl.int64)
        cols = cols.to(tl.int64)
    ptrs = out_ptr + dst[:, None] * stride_om + cols[None, :] * stride_on
    tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & (cols < N)[None, :])


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
    ws_ptr,
    cnt_ptr,
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
    ACT: tl.constexpr,
    SPLIT: tl.constexpr,
    SKIP: tl.constexpr,
    BLEND: tl.constexpr,
    UPCAST: tl.constexpr,
    RECORD_PATH: tl.constexpr,
    SWAP_AB: tl.constexpr,
    INT64: tl.constexpr,
    ALIGNED16: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Grid: (NUM_TILES * cdiv(N_out, BLOCK_N_out), SPLIT_K), N_out = N (or N / 2 with ACT, in tiles of
    BLOCK_N / 2).

    x [*, K] (any strides); W_I/W_T [E, N, K] (same strides); lam fp32, token t reads
    lam[t // ROWS_PER_LAM]; tiles int32 [NUM_TILES, 3] = (expert, first row, end row) of each row tile
    of the P sorted rows (first >= end: an unused tile, which exits at once); src/tok/dst [P] int: the x row
    (GATHER; else row p itself), the token (for λ) and the output row (SCATTER; else p) of sorted row p;
    scale [P] fp32: a factor per row applied in the epilogue (HAS_SCALE: the routing weight); out [*, N_out]
    (rows at stride_om). SPLIT: ws fp32 [SPLIT_K, stride_os] holds the partials of sorted row p at
    p * (N rounded up to BLOCK_N) + the program's column, cnt int32 [grid0] zeros (left zero). RECORD_PATH:
    write the path each program took to path_ptr [grid0, SPLIT_K] (-2: unused tile, 0: W_I only, 1: W_T
    only, 2: blend, 3: dual). ALIGNED16: stride_xm and stride_os are multiples of 16 (the launcher checks).
    SKIP/BLEND/UPCAST/SWAP_AB/INT64/PRECISION as in `interp_linear_kernel`.
    Run-time sizes (P, the tile count) are not specialized: a new batch never recompiles.
    """
    if ALIGNED16:
        # Exact under the flag; the compiler then knows the divisibility (tl.multiple_of is ignored on
        # scalar arguments): x rows load as vectors through cp.async.
        stride_xm = (stride_xm // 16) * 16
        stride_os = (stride_os // 16) * 16
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_n = tl.cdiv(N, BLOCK_N)  # with ACT (N = 2I even): cdiv(I, BLOCK_N / 2) programs per row tile
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
    j = tl.arange(0, BLOCK_N)
    if ACT:
        # Interleaved weight rows: even j -> gate row c, odd j -> up row N/2 + c (c a hidden column).
        half = N // 2
        c = pid_n * (BLOCK_N // 2) + j // 2
        col_mask = c < half
        cols_c = tl.where(col_mask, c + (j % 2) * half, 0)
    else:
        cols = pid_n * BLOCK_N + j
        col_mask = cols < N
        cols_c = tl.where(col_mask, cols, 0)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = min(k_lo + K_PER_SPLIT, K)

    lam = tl.load(lam_ptr + tok // ROWS_PER_LAM, mask=row_mask, other=0.0)

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

    out, path = mm_paths(
        x_ptrs,
        wi_ptr + w_offs,
        wt_ptr + w_offs,
        lam,
        row_mask,
        lam,  # no bias: b_i, b_t unused
        lam,
        k_lo,
        k_hi,
        stride_xk,
        stride_wk,
        False,  # ADD_BIAS: the experts have no bias
        SKIP,
        BLEND,
        BLOCK_M,
        BLOCK_N,
        BLOCK_K,
        SWAP_AB,
        UPCAST,
        PRECISION,
    )
    if RECORD_PATH:
        tl.store(path_ptr + pid * tl.num_programs(1) + pid_k, path)

    if SCATTER:
        dst = tl.load(dst_ptr + rows_c)
    else:
        dst = rows_c
    if SPLIT:
        # Partials by sorted row and the program's own columns (row stride: N rounded up to BLOCK_N).
        ws_cols = pid_n * BLOCK_N + j
        ws_stride_m = num_pid_n * BLOCK_N
        r = rows_c
        split_off = pid_k * stride_os
        if INT64:
            r = r.to(tl.int64)
            ws_cols = ws_cols.to(tl.int64)
            split_off = pid_k.to(tl.int64) * stride_os
        offs = r[:, None] * ws_stride_m + ws_cols[None, :]
        mask = row_mask[:, None] & col_mask[None, :]
        tl.store(ws_ptr + split_off + offs, out, mask=mask)
        if last_split(cnt_ptr, pid):
            acc = sum_splits(ws_ptr + offs, stride_os, mask, tl.num_programs(1), BLOCK_M, BLOCK_N)
            _epilogue(
                out_ptr,
                acc,
                rows_c,
                dst,
                scale_ptr,
                row_mask,
                pid_n,
                N // 2 if ACT else N,
                stride_om,
                stride_on,
                HAS_SCALE,
                ACT,
                INT64,
                BLOCK_M,
                BLOCK_N,
            )
            tl.store(cnt_ptr + pid, 0)
    else:
        _epilogue(
            out_ptr,
            out,
            rows_c,
            dst,
            scale_ptr,
            row_mask,
            pid_n,
            N // 2 if ACT else N,
            stride_om,
            stride_on,
            HAS_SCALE,
            ACT,
            INT64,
            BLOCK_M,
            BLOCK_N,
        )
