"""Triton kernel for the interpolated linear layer: y_r = (1-λ_r)(W_I x_r + b_I) + λ_r(W_T x_r + b_T).

One kernel, four per-tile paths chosen at run time from the λ values of the tile's rows (no host sync):
  1. endpoint skip: all rows λ=0 -> one GEMM on W_I only; all rows λ=1 -> W_T only (half the bytes);
  2. blend in registers: all rows share one λ -> W = (1-λ)W_I + λW_T per K-tile, ONE matrix product
     (same bytes, half the tensor-core work);
  3. dual accumulator: mixed λ -> two fp32 accumulators, per-row blend in the epilogue;
  4. split-K (SPLIT, used for small M): each program reduces one K-slice into an fp32 partial in a
     workspace [SPLIT_K, M, N]; the last program of a tile sums the partials in split order and casts
     (`common.tiles.finish_split`: one launch per call); with one row tile covering all M rows, both
     weights are streamed exactly once (the decode path).
Row tiles can follow sequence boundaries: rows are grouped in segments of SEG_LEN rows (one sequence
each, when λ is per sequence) and a row tile never straddles two segments, so it always shares one λ.
"""

import triton
import triton.language as tl

from dami_kernels.ops.common.tiles import finish_split, mm_paths, store_tile


@triton.jit(do_not_specialize=["M", "SEG_LEN", "TILES_PER_SEG", "NUM_PID_M", "ROWS_PER_LAM", "stride_xm", "stride_os"])
def interp_linear_kernel(
    x_ptr,
    wi_ptr,
    wt_ptr,
    bi_ptr,
    bt_ptr,
    lam_ptr,
    out_ptr,
    path_ptr,
    ws_ptr,
    cnt_ptr,
    M,
    N,
    K,
    SEG_LEN,
    TILES_PER_SEG,
    NUM_PID_M,
    K_PER_SPLIT,
    ROWS_PER_LAM,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_os,
    stride_om,
    stride_on,
    HAS_BIAS: tl.constexpr,
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
    GROUP_M: tl.constexpr,
):
    """Grid: (NUM_PID_M * cdiv(N, BLOCK_N), SPLIT_K).

    x [M, K] (any strides), W_I/W_T [N, K] (same strides), biases [N], lam [ceil(M / ROWS_PER_LAM)]
    fp32 (row r reads lam[r // ROWS_PER_LAM]: 1 per row, T per sequence of T rows, >= M for a scalar),
    out [M, N] (rows at stride_om, columns at stride_on). SPLIT (SPLIT_K > 1): ws fp32 [SPLIT_K, stride_os]
    holds the partials (same row/column strides as out), cnt int32 [grid0] zeros (left zero); otherwise
    ws, cnt and stride_os are unused. NUM_PID_M = segments * TILES_PER_SEG.
    SKIP / BLEND switch the endpoint-skip and blend-in-registers paths on (tests switch them off to
    reach the dual-accumulator path with uniform λ). RECORD_PATH: write the path each program took to
    path_ptr [grid0, SPLIT_K] (0: W_I only, 1: W_T only, 2: blend, 3: dual), for tests. SWAP_AB:
    compute each tile transposed (W @ x^T), see `_dot_xw`. INT64: 64-bit element offsets (the launcher
    sets it when an offset of this launch can reach 2**31). ALIGNED16: stride_xm and stride_os are multiples
    of 16 (the launcher checks); they are not specialized, so without it the x loads and the output stores
    are scalar (x then stays outside the cp.async pipeline). PRECISION: see `_dot`.
    Arguments that change from call to call (M and what derives from it) are not specialized, so a
    decode loop or a new prompt length never triggers a recompile.
    """
    if ALIGNED16:
        # Exact under the flag; the compiler then knows the divisibility (tl.multiple_of is ignored on
        # scalar arguments).
        stride_xm = (stride_xm // 16) * 16
        stride_os = (stride_os // 16) * 16
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped tile order: GROUP_M row tiles share each weight column tile while it is in L2.
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(NUM_PID_M - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    # Row tile inside its segment: never straddles two sequences.
    seg = pid_m // TILES_PER_SEG
    local = (pid_m % TILES_PER_SEG) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = seg * SEG_LEN + local
    row_mask = (local < SEG_LEN) & (rows < M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    k_lo = pid_k * K_PER_SPLIT
    k_hi = min(k_lo + K_PER_SPLIT, K)

    lam = tl.load(lam_ptr + rows // ROWS_PER_LAM, mask=row_mask, other=0.0)
    # Bias enters once: only the first K-split adds it (the others add zeros).
    if HAS_BIAS:
        first = (pid_k == 0).to(tl.float32)
        b_i = tl.load(bi_ptr + cols, mask=col_mask, other=0.0).to(tl.float32) * first
        b_t = tl.load(bt_ptr + cols, mask=col_mask, other=0.0).to(tl.float32) * first
    else:
        # Zeros, added all the same: dropping the add changes register allocation (the fp32 64x64x16 M = 64
        # variant then spills 8 B).
        b_i = tl.zeros((BLOCK_N,), dtype=tl.float32)
        b_t = tl.zeros((BLOCK_N,), dtype=tl.float32)

    # Out-of-range rows/columns are clamped to a valid index (their results are never stored), so the
    # K loop masks only its tail.
    rows_c = tl.where(row_mask, rows, 0)
    cols_c = tl.where(col_mask, cols, 0)
    rk = k_lo + tl.arange(0, BLOCK_K)
    if INT64:
        rows_c = rows_c.to(tl.int64)
        cols_c = cols_c.to(tl.int64)
        rk = rk.to(tl.int64)
    if SWAP_AB:
        x_ptrs = x_ptr + rows_c[None, :] * stride_xm + rk[:, None] * stride_xk
        w_offs = cols_c[:, None] * stride_wn + rk[None, :] * stride_wk
    else:
        x_ptrs = x_ptr + rows_c[:, None] * stride_xm + rk[None, :] * stride_xk
        w_offs = cols_c[None, :] * stride_wn + rk[:, None] * stride_wk

    out, path = mm_paths(
        x_ptrs,
        wi_ptr + w_offs,
        wt_ptr + w_offs,
        lam,
        row_mask,
        b_i,
        b_t,
        k_lo,
        k_hi,
        stride_xk,
        stride_wk,
        True,  # ADD_BIAS: b_i, b_t above (zeros without a bias)
        SKIP,
        BLEND,
        BLOCK_M,
        BLOCK_N,
        BLOCK_K,
        SWAP_AB,
        UPCAST,
        PRECISION,
    )

    store_tile(
        ws_ptr if SPLIT else out_ptr,
        out,
        rows,
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
    if SPLIT:
        finish_split(
            out_ptr,
            ws_ptr,
            cnt_ptr,
            rows,
            cols,
            pid,
            stride_os,
            stride_om,
            stride_on,
            row_mask[:, None] & col_mask[None, :],
            INT64,
        )
