"""Triton device functions that both kernel families share.

The tile loads (x and W, either orientation: SWAP_AB computes the transposed tile so that a small M sits in
the wide tensor-core dimension), the three K loops (one weight; a weight blended in registers from a shared
λ; two fp32 accumulators for mixed λ), the choice among them by the tile's λ (`mm_paths`), the tile store
(which can record the path a program took) and the in-kernel split-K reduction (`last_split`, `sum_splits`).
`interp_linear/kernel.py` and `interp_experts/kernel.py` are built from them.
"""

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """acc += a @ b. UPCAST: fp32 operands (the CPU interpreter's bf16/fp16 dot is not reliable).
    PRECISION: tl.dot's input_precision for fp32 operands ("ieee": exact fp32, the default; "tf32" only
    when the user enabled TF32 through torch's switch). Ignored for fp16/bf16 operands."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision=PRECISION)
    return tl.dot(a, b, acc)


@triton.jit
def _load_x(ptrs, rk, k_left, SWAP_AB: tl.constexpr):
    """x tile, [BLOCK_M, BLOCK_K] (or [BLOCK_K, BLOCK_M] with SWAP_AB); only the K tail is masked."""
    if SWAP_AB:
        tile = tl.load(ptrs, mask=rk[:, None] < k_left, other=0.0)
    else:
        tile = tl.load(ptrs, mask=rk[None, :] < k_left, other=0.0)
    return tile


@triton.jit
def _load_w(ptrs, rk, k_left, SWAP_AB: tl.constexpr):
    """W tile, [BLOCK_K, BLOCK_N] (or [BLOCK_N, BLOCK_K] with SWAP_AB); only the K tail is masked."""
    if SWAP_AB:
        tile = tl.load(ptrs, mask=rk[None, :] < k_left, other=0.0)
    else:
        tile = tl.load(ptrs, mask=rk[:, None] < k_left, other=0.0)
    return tile


@triton.jit
def _dot_xw(x, w, acc, SWAP_AB: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """acc += x @ W^T, or acc^T += W @ x^T with SWAP_AB (the weight is the A operand: on Hopper a
    weight tile computed in registers, such as a blend, then feeds the MMA without a shared-memory
    round trip, and a small M becomes the MMA's narrow N side)."""
    if SWAP_AB:
        acc = _dot(w, x, acc, UPCAST, PRECISION)
    else:
        acc = _dot(x, w, acc, UPCAST, PRECISION)
    return acc


@triton.jit
def _zeros_acc(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SWAP_AB: tl.constexpr):
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    return acc


@triton.jit
def _out_orient(acc, SWAP_AB: tl.constexpr):
    """An accumulator in output orientation [BLOCK_M, BLOCK_N]."""
    if SWAP_AB:
        acc = tl.trans(acc)
    return acc


@triton.jit
def mm_one(
    x_ptrs,
    w_ptrs,
    k_lo,
    k_hi,
    stride_xk,
    stride_wk,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SWAP_AB: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """x @ W^T over K in [k_lo, k_hi) -> fp32 [BLOCK_M, BLOCK_N].

    x_ptrs and w_ptrs point at the first K-tile (rows and columns already clamped in range, laid out
    as `_load_x`/`_load_w` expect); they advance by BLOCK_K and only the K tail is masked."""
    acc = _zeros_acc(BLOCK_M, BLOCK_N, SWAP_AB)
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k_left = k_hi - k0
        a = _load_x(x_ptrs, rk, k_left, SWAP_AB)
        b = _load_w(w_ptrs, rk, k_left, SWAP_AB)
        acc = _dot_xw(a, b, acc, SWAP_AB, UPCAST, PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    return _out_orient(acc, SWAP_AB)


@triton.jit
def mm_blend(
    x_ptrs,
    wi_ptrs,
    wt_ptrs,
    lam,
    k_lo,
    k_hi,
    stride_xk,
    stride_wk,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SWAP_AB: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """x @ ((1-λ)W_I + λW_T)^T for one scalar λ: the blend is done per K-tile in registers (fp32,
    rounded to the weights' dtype) and feeds ONE matrix product. Returns fp32 [BLOCK_M, BLOCK_N]."""
    acc = _zeros_acc(BLOCK_M, BLOCK_N, SWAP_AB)
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k_left = k_hi - k0
        a = _load_x(x_ptrs, rk, k_left, SWAP_AB)
        bi = _load_w(wi_ptrs, rk, k_left, SWAP_AB)
        bt = _load_w(wt_ptrs, rk, k_left, SWAP_AB)
        b = ((1.0 - lam) * bi.to(tl.float32) + lam * bt.to(tl.float32)).to(bi.dtype)
        acc = _dot_xw(a, b, acc, SWAP_AB, UPCAST, PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        wi_ptrs += BLOCK_K * stride_wk
        wt_ptrs += BLOCK_K * stride_wk
    return _out_orient(acc, SWAP_AB)


@triton.jit
def mm_dual(
    x_ptrs,
    wi_ptrs,
    wt_ptrs,
    k_lo,
    k_hi,
    stride_xk,
    stride_wk,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SWAP_AB: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """(x @ W_I^T, x @ W_T^T) with two fp32 accumulators; each x tile is loaded once."""
    acc_i = _zeros_acc(BLOCK_M, BLOCK_N, SWAP_AB)
    acc_t = _zeros_acc(BLOCK_M, BLOCK_N, SWAP_AB)
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k_left = k_hi - k0
        a = _load_x(x_ptrs, rk, k_left, SWAP_AB)
        bi = _load_w(wi_ptrs, rk, k_left, SWAP_AB)
        bt = _load_w(wt_ptrs, rk, k_left, SWAP_AB)
        acc_i = _dot_xw(a, bi, acc_i, SWAP_AB, UPCAST, PRECISION)
        acc_t = _dot_xw(a, bt, acc_t, SWAP_AB, UPCAST, PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        wi_ptrs += BLOCK_K * stride_wk
        wt_ptrs += BLOCK_K * stride_wk
    return _out_orient(acc_i, SWAP_AB), _out_orient(acc_t, SWAP_AB)


@triton.jit
def mm_paths(
    x_ptrs,
    wi_ptrs,
    wt_ptrs,
    lam,
    row_mask,
    b_i,
    b_t,
    k_lo,
    k_hi,
    stride_xk,
    stride_wk,
    ADD_BIAS: tl.constexpr,
    SKIP: tl.constexpr,
    BLEND: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SWAP_AB: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """(out, path): the tile's (1-λ_r)(x W_I^T + b_I) + λ_r(x W_T^T + b_T), fp32 [BLOCK_M, BLOCK_N], by the
    path the λ of its rows allow (lam [BLOCK_M] fp32, row_mask [BLOCK_M]; b_i, b_t [BLOCK_N] fp32, added only
    when ADD_BIAS): 0 W_I only (every row λ = 0) and 1 W_T only (every row λ = 1) when SKIP; 2 one product on
    the blended weight (one shared λ) when BLEND; 3 two accumulators blended per row. Shared by the dense and
    the grouped kernels."""
    lam_lo = tl.min(tl.where(row_mask, lam, float("inf")), axis=0)
    lam_hi = tl.max(tl.where(row_mask, lam, float("-inf")), axis=0)
    path = tl.full((), 3, tl.int32)
    if SKIP and (lam_hi == 0.0) & (lam_lo == 0.0):
        path = tl.full((), 0, tl.int32)
        out = mm_one(
            x_ptrs, wi_ptrs, k_lo, k_hi, stride_xk, stride_wk, BLOCK_M, BLOCK_N, BLOCK_K, SWAP_AB, UPCAST, PRECISION
        )
        if ADD_BIAS:
            out = out + b_i[None, :]
    elif SKIP and (lam_hi == 1.0) & (lam_lo == 1.0):
        path = tl.full((), 1, tl.int32)
        out = mm_one(
            x_ptrs, wt_ptrs, k_lo, k_hi, stride_xk, stride_wk, BLOCK_M, BLOCK_N, BLOCK_K, SWAP_AB, UPCAST, PRECISION
        )
        if ADD_BIAS:
            out = out + b_t[None, :]
    elif BLEND and (lam_lo == lam_hi):
        path = tl.full((), 2, tl.int32)
        out = mm_blend(
            x_ptrs,
            wi_ptrs,
            wt_ptrs,
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
        if ADD_BIAS:
            out = out + ((1.0 - lam_lo) * b_i + lam_lo * b_t)[None, :]
    else:
        acc_i, acc_t = mm_dual(
            x_ptrs,
            wi_ptrs,
            wt_ptrs,
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
        if ADD_BIAS:
            acc_i = acc_i + b_i[None, :]
            acc_t = acc_t + b_t[None, :]
        lam2 = lam[:, None]
        out = (1.0 - lam2) * acc_i + lam2 * acc_t
    return out, path


@triton.jit
def store_tile(
    out_ptr,
    out,
    rows,
    cols,
    pid_k,
    stride_os,
    stride_om,
    stride_on,
    mask,
    path_ptr,
    pid,
    path,
    INT64: tl.constexpr,
    RECORD_PATH: tl.constexpr,
):
    """Store a [BLOCK_M, BLOCK_N] fp32 tile at output rows `rows` (split pid_k's slice), in i64 offsets
    when INT64; record the program's path when RECORD_PATH. Shared by the dense and grouped kernels."""
    split_off = pid_k * stride_os
    if INT64:
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)
        split_off = pid_k.to(tl.int64) * stride_os
    out_ptrs = out_ptr + split_off + rows[:, None] * stride_om + cols[None, :] * stride_on
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)
    if RECORD_PATH:
        tl.store(path_ptr + pid * tl.num_programs(1) + pid_k, path)


@triton.jit
def finish_split(
    out_ptr,
    ws_ptr,
    cnt_ptr,
    rows,
    cols,
    pid,
    stride_os,
    stride_om,
    stride_on,
    mask,
    INT64: tl.constexpr,
):
    """In-kernel split-K reduction, after `store_tile` wrote this program's fp32 partial to the workspace
    ws [SPLIT_K, stride_os] (rows at stride_om, columns at stride_on, as out). cnt [grid0] int32 counts the
    splits of tile `pid` that arrived; the program that completes the tile sums the partials in split
    order 0..SPLIT_K-1 (bit-identical whichever program arrives last), stores them cast to out's dtype
    and resets cnt[pid] to 0, so the counters stay zero between launches (the workspace can be reused)."""
    num_splits = tl.num_programs(1)
    if INT64:
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)
    offs = rows[:, None] * stride_om + cols[None, :] * stride_on
    if last_split(cnt_ptr, pid):
        acc = sum_splits(ws_ptr + offs, stride_os, mask, num_splits, rows.shape[0], cols.shape[0])
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(cnt_ptr + pid, 0)


@triton.jit
def last_split(cnt_ptr, pid):
    """True in the program that brings tile `pid`'s split count (cnt[pid], int32) to the number of splits, after
    this program's partial is written: it then sums the partials and resets cnt[pid] to 0. The barrier orders
    every thread's partial before the release; the acq_rel atomic makes the other splits' partials visible."""
    tl.debug_barrier()
    arrived = tl.atomic_add(cnt_ptr + pid, 1, sem="acq_rel", scope="gpu")
    return arrived == tl.num_programs(1) - 1


@triton.jit
def sum_splits(part_ptrs, stride_os, mask, num_splits, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """sum_s part[s] over the splits in order 0..num_splits-1 (fixed order: bit-identical whichever program
    sums), fp32 [BLOCK_M, BLOCK_N]; part_ptrs point at split 0, slices stride_os apart. Read through L2 (.cg):
    other programs wrote them."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, num_splits):
        acc += tl.load(part_ptrs, mask=mask, other=0.0, cache_modifier=".cg")
        part_ptrs += stride_os
    return acc
