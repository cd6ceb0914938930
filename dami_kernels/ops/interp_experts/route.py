"""Triton kernels around the grouped launches of the experts MLP: the routing table (one program) and the
k-slot combine.

`route_kernel` turns the stably expert-sorted pairs into the tile table of the grouped kernel and the per-row
token / routing weight, in one launch (the torch version, `launch.tile_table`, took about 20 ops). Tiles follow
segments of equal (expert, group) with group = token // GROUP_ROWS: where λ is per sequence, the launcher sets
GROUP_ROWS to the sequence length, so no tile straddles two sequences (one λ per tile: the endpoint and blend
paths). `combine_kernel` sums the k slots of each token in slot order (fixed: deterministic) and rounds once.
"""

import triton
import triton.language as tl


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit(do_not_specialize=["P", "NUM_TILES", "GROUP_ROWS"])
def route_kernel(
    order_ptr,
    index_ptr,
    weights_ptr,
    tiles_ptr,
    tok_ptr,
    scale_ptr,
    P,
    NUM_TILES,
    GROUP_ROWS,
    TOP_K: tl.constexpr,
    NUM_EXPERTS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Grid (1,). order [P] int64: the pairs p = t·TOP_K + j stably sorted by expert index[p] (int, [0,
    NUM_EXPERTS]; NUM_EXPERTS: held elsewhere, sorted last, given no tile); weights [P]. Writes tok [P] int32
    (the token of sorted row r), scale [P] fp32 (its routing weight) and tiles int32 [NUM_TILES, 3] = (expert,
    first row, end row): each segment of equal (expert, token // GROUP_ROWS) split into tiles of BLOCK_M rows,
    in row order; the unused tail is (0, 0, 0). NUM_TILES >= the tile count (the launcher's bound)."""
    seg_carry = tl.full((), 0, tl.int32)  # the first row of the segment open at the end of the previous block
    tile_carry = tl.full((), 0, tl.int32)  # tiles started before this block
    for r0 in range(0, P, BLOCK):
        r = r0 + tl.arange(0, BLOCK)
        in_range = r < P
        pair = tl.load(order_ptr + r, mask=in_range, other=0)
        e = tl.load(index_ptr + pair, mask=in_range, other=NUM_EXPERTS).to(tl.int32)
        tok = (pair // TOP_K).to(tl.int32)
        g = tok // GROUP_ROWS
        prev_in = in_range & (r > 0)
        prev = tl.load(order_ptr + r - 1, mask=prev_in, other=0)
        e_prev = tl.load(index_ptr + prev, mask=prev_in, other=-1).to(tl.int32)
        g_prev = (prev // TOP_K).to(tl.int32) // GROUP_ROWS
        nxt_in = (r + 1) < P
        nxt = tl.load(order_ptr + r + 1, mask=nxt_in, other=0)
        e_next = tl.load(index_ptr + nxt, mask=nxt_in, other=-1).to(tl.int32)
        g_next = (nxt // TOP_K).to(tl.int32) // GROUP_ROWS
        tl.store(tok_ptr + r, tok, mask=in_range)
        w = tl.load(weights_ptr + pair, mask=in_range, other=0.0).to(tl.float32)
        tl.store(scale_ptr + r, w, mask=in_range)

        starts_seg = (r == 0) | (e != e_prev) | (g != g_prev)
        seg = tl.maximum(tl.associative_scan(tl.where(starts_seg & in_range, r, -1), 0, _max), seg_carry)
        held = in_range & (e < NUM_EXPERTS)
        starts_tile = held & ((r - seg) % BLOCK_M == 0)
        ends_seg = (r + 1 == P) | (e != e_next) | (g != g_next)
        ends_tile = held & (ends_seg | ((r + 1 - seg) % BLOCK_M == 0))
        tile = tile_carry + tl.cumsum(starts_tile.to(tl.int32), 0) - 1  # the tile row r belongs to
        tl.store(tiles_ptr + tile * 3, e, mask=starts_tile)
        tl.store(tiles_ptr + tile * 3 + 1, r, mask=starts_tile)
        tl.store(tiles_ptr + tile * 3 + 2, r + 1, mask=ends_tile)
        seg_carry = tl.max(seg, 0)
        tile_carry += tl.sum(starts_tile.to(tl.int32), 0)
    for t0 in range(tile_carry, NUM_TILES, BLOCK):
        t = t0 + tl.arange(0, BLOCK)
        unused = t < NUM_TILES
        zero = tl.zeros((BLOCK,), dtype=tl.int32)
        tl.store(tiles_ptr + t * 3, zero, mask=unused)
        tl.store(tiles_ptr + t * 3 + 1, zero, mask=unused)
        tl.store(tiles_ptr + t * 3 + 2, zero, mask=unused)


@triton.jit(do_not_specialize=["T"])
def combine_kernel(
    pair_ptr, index_ptr, out_ptr, T, H, TOP_K: tl.constexpr, NUM_EXPERTS: tl.constexpr, BLOCK_H: tl.constexpr
):
    """Grid (T, cdiv(H, BLOCK_H)). out[t] = sum_j pair[t·TOP_K + j] over the slots j = 0..TOP_K-1 in order
    whose expert index[t, j] < NUM_EXPERTS (the others were never written), fp32, cast once to out's dtype.
    pair fp32 [T·TOP_K, H], out [T, H] contiguous."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < H
    acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        held = tl.load(index_ptr + t * TOP_K + j + tl.zeros((BLOCK_H,), dtype=tl.int32)) < NUM_EXPERTS
        acc += tl.load(pair_ptr + (t * TOP_K + j) * H + cols, mask=mask & held, other=0.0)
    tl.store(out_ptr + t * H + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)
