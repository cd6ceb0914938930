"""Launcher of the grouped dual-weight kernel: the interpolated experts MLP on the Triton backend.

`interp_experts_triton` sorts the T·k token-expert pairs by expert (one stable sort) and builds the tile table
on the device in one launch (`route.route_kernel`; no host sync, so no data-dependent host decision), then runs
two grouped launches: gate_up(λ) on the gathered token rows with silu(gate) * up in its epilogue, and down(λ)
whose epilogue multiplies by the routing weight and stores each pair's row back in (token, slot) order, in fp32;
`route.combine_kernel` sums the k slots of a token in fp32 and rounds once (a fixed order, no atomics).
Five launches per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dami_kernels.ops.common import launch as common_launch
from dami_kernels.ops.common.backend import interpreting
from dami_kernels.ops.common.configs import KernelConfig, pick_config
from dami_kernels.ops.common.launch import INT32_LIMIT, cdiv, next_pow2
from dami_kernels.ops.interp_experts.kernel import interp_grouped_kernel
from dami_kernels.ops.interp_experts.route import combine_kernel, route_kernel

ROUTE_BLOCK = 1024  # rows per step of the one-program routing kernel
COMBINE_BLOCK = 1024  # columns per program of the k-slot combine


def tile_table(sorted_experts: torch.Tensor, num_experts: int, block_m: int) -> torch.Tensor:
    """Row tiles of the P expert-sorted rows, none straddling two experts: int32 [NT, 3] of (expert,
    first row, end row), NT = min(P, cdiv(P, block_m) + E) (an upper bound known on the host); the
    unused tail tiles have first row = end row = 0. Rows with expert id E (held elsewhere) get no tile."""
    p = sorted_experts.numel()
    dev = sorted_experts.device
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=dev)
    counts.scatter_add_(0, sorted_experts.long(), torch.ones_like(sorted_experts, dtype=torch.int64))
    counts = counts[:num_experts]
    ends = torch.cumsum(counts, 0)
    tiles_per = (counts + block_m - 1) // block_m
    tile_ends = torch.cumsum(tiles_per, 0)
    nt = max(1, min(p, cdiv(p, block_m) + num_experts))
    j = torch.arange(nt, device=dev)
    e = torch.searchsorted(tile_ends, j, right=True)
    valid = e < num_experts
    e = e.clamp(max=num_experts - 1)
    first = ends[e] - counts[e] + (j - (tile_ends[e] - tiles_per[e])) * block_m
    lo = torch.where(valid, first, 0)
    hi = torch.where(valid, ends[e], 0)
    return torch.stack([e, lo, hi], dim=1).to(torch.int32).contiguous()


def _needs_int64(x, w, out_rows: int, out_cols: int, ws_numel: int, block_k: int) -> bool:
    """True when an element offset of this launch can reach 2**31 (see interp_linear.launch.needs_int64)."""
    k_end = w.shape[2] + block_k
    x_max = (x.shape[0] - 1) * x.stride(0) + k_end * x.stride(1)
    w_max = (w.shape[0] - 1) * w.stride(0) + (w.shape[1] - 1) * w.stride(1) + k_end * w.stride(2)
    return max(x_max, w_max, out_rows * out_cols, ws_numel) >= INT32_LIMIT


def launch_grouped(
    x,
    w_i,
    w_t,
    lam,
    rows_per_lam,
    tiles,
    tok,
    src,
    dst,
    scale,
    out_rows,
    config,
    skip=True,
    blend=True,
    record_path=None,
    out_dtype=None,
    act=False,
) -> torch.Tensor:
    """out[dst_p] = scale_p · x[src_p] W_e(λ_{tok_p})^T for every sorted row p; returns [out_rows, N] in
    out_dtype (default x's dtype). act: W is gate_up [E, 2I, K]; out[p] = silu(gate) * up, [out_rows, I].
    One launch (split-K reduces inside the kernel, in a cached workspace).

    x [*, K]; w_i/w_t [E, N, K] (same strides); lam fp32 [S], token t reads lam[t // rows_per_lam];
    tiles from `tile_table` / `route_kernel`; tok [P] int32; src/dst [P] int or None (row p itself); scale
    [P] fp32 or None. config: the tile config (its block_m must be the one `tiles` was built with)."""
    if w_t.stride() != w_i.stride():
        raise ValueError(f"w_i and w_t must have the same strides, got {w_i.stride()} and {w_t.stride()}")
    p = tok.numel()
    _, n, k = w_i.shape
    dtype, device = x.dtype, x.device
    out_dtype = out_dtype or dtype
    split_k = max(1, min(config.split_k, cdiv(k, config.block_k)))
    k_per_split = cdiv(cdiv(k, split_k), config.block_k) * config.block_k
    split_k = cdiv(k, k_per_split)
    out_cols = n // 2 if act else n
    y = common_launch.alloc_output((out_rows, out_cols), out_dtype, device)
    nt = tiles.shape[0]
    num_pid_n = cdiv(n, config.block_n)
    grid = (nt * num_pid_n, split_k)
    # Workspace slice: the P sorted rows (rounded up to a power of two: calls share it) by the programs'
    # columns, a multiple of 16 (aligned slices).
    stride_os = cdiv(next_pow2(p) * num_pid_n * config.block_n, 16) * 16 if split_k > 1 else 0
    ws_numel = split_k * stride_os
    if split_k > 1:
        ws, cnt = common_launch.split_workspace(device, ws_numel), common_launch.split_counters(device, grid[0])
    else:
        ws, cnt = y, tok
    if record_path is not None:
        record_path.resize_(grid[0] * grid[1]).fill_(-1)
    int64 = _needs_int64(x, w_i, out_rows, out_cols, ws_numel, config.block_k)
    precision = "tf32" if dtype == torch.float32 and common_launch.tf32_enabled() else "ieee"
    common_launch.launch_kernel(
        interp_grouped_kernel,
        grid,
        (
            x,
            w_i,
            w_t,
            lam,
            y,
            tiles,
            src if src is not None else tok,
            tok,
            dst if dst is not None else tok,
            scale if scale is not None else lam,
            record_path if record_path is not None else tok,
            ws,
            cnt,
            p,
            n,
            k,
            nt,
            k_per_split,
            rows_per_lam,
            x.stride(0),
            x.stride(1),
            w_i.stride(0),
            w_i.stride(1),
            w_i.stride(2),
            stride_os,
            out_cols,
            1,
        ),
        dict(
            GATHER=src is not None,
            SCATTER=dst is not None,
            HAS_SCALE=scale is not None,
            ACT=act,
            SPLIT=split_k > 1,
            SKIP=skip,
            BLEND=blend,
            UPCAST=interpreting() and dtype != torch.float32,
            RECORD_PATH=record_path is not None,
            SWAP_AB=config.swap_ab,
            INT64=int64,
            ALIGNED16=x.stride(0) % 16 == 0,
            PRECISION=precision,
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            BLOCK_K=config.block_k,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        ),
    )
    return y


def route(top_k_index, top_k_weights, num_experts: int, block_m: int, group_rows: int):
    """(order [P] int64, tiles int32 [NT, 3], tok [P] int32, scale [P] fp32) of the T·k pairs: one stable
    sort by expert and one `route_kernel` launch. group_rows: tokens per λ group (tiles never straddle two
    groups; T or more: tiles split by expert only)."""
    t, k = top_k_index.shape
    p = t * k
    device = top_k_index.device
    order = torch.sort(top_k_index.reshape(-1), stable=True)[1]
    groups = cdiv(t, group_rows)
    # Tiles: cdiv(length, block_m) per (expert, group) segment; at most one partial tile per segment.
    nt = max(1, min(p, cdiv(p, block_m) + min(num_experts * groups, p)))
    tiles = torch.empty((nt, 3), dtype=torch.int32, device=device)
    tok = torch.empty(p, dtype=torch.int32, device=device)
    scale = torch.empty(p, dtype=torch.float32, device=device)
    common_launch.launch_kernel(
        route_kernel,
        (1,),
        (order, top_k_index, top_k_weights, tiles, tok, scale, p, nt, group_rows),
        dict(TOP_K=k, NUM_EXPERTS=num_experts, BLOCK_M=block_m, BLOCK=ROUTE_BLOCK),
    )
    return order, tiles, tok, scale


def experts_config(p: int, num_experts: int, n: int, k: int, w: torch.Tensor) -> KernelConfig:
    """The dense kernel's config for the rows an expert gets on average (cdiv(P, E))."""
    return pick_config(max(1, cdiv(p, num_experts)), n, k, w.dtype, w.device, k_contiguous=w.stride(2) == 1)


def interp_experts_triton(
    x,
    gate_up_i,
    gate_up_t,
    down_i,
    down_t,
    top_k_index,
    top_k_weights,
    lam,
    rows_per_lam: int,
    act_fn,
    configs: tuple | None = None,
    skip: bool = True,
    blend: bool = True,
    record_paths: tuple | None = None,
) -> torch.Tensor:
    """The experts MLP on the Triton backend; shapes as `moe.interp_experts` (x [T, H] contiguous rows
    or any strides; λ fp32 [S], token t reads lam[t // rows_per_lam]). Returns [T, H] in x's dtype.

    Launches (5, none with a host sync): the stable sort by expert, `route_kernel`, gate_up with silu(gate) *
    up in its epilogue (another act_fn: gate_up, then act_fn and the product in torch, 3 more), down with the
    routing weight in its epilogue into fp32 per (token, slot), `combine_kernel` (k slots summed in order).
    configs: (gate_up config, down config) with one block_m (tests); record_paths: two int32 tensors
    that receive the path of every program of the two launches (tests)."""
    t, h = x.shape
    k = top_k_index.shape[1]
    num_experts, two_i, _ = gate_up_i.shape
    p = t * k
    if p == 0:
        return torch.zeros_like(x)
    if configs is None:
        configs = (
            experts_config(p, num_experts, two_i, h, gate_up_i),
            experts_config(p, num_experts, h, two_i // 2, down_i),
        )
    if configs[0].block_m != configs[1].block_m:
        configs = (configs[0], _with_block_m(configs[1], configs[0].block_m))
    rec = record_paths or (None, None)
    # λ per sequence (1 < rows_per_lam < T): tiles follow sequences; else (per token, shared): experts only.
    group_rows = rows_per_lam if 1 < rows_per_lam < t else t
    order, tiles, tok, scale = route(top_k_index, top_k_weights, num_experts, configs[0].block_m, group_rows)
    fused = act_fn is F.silu or isinstance(act_fn, torch.nn.SiLU)
    hid = launch_grouped(
        x,
        gate_up_i,
        gate_up_t,
        lam,
        rows_per_lam,
        tiles,
        tok,
        tok,
        None,
        None,
        p,
        configs[0],
        skip,
        blend,
        rec[0],
        act=fused,
    )
    if not fused:
        gate, up = hid.chunk(2, dim=-1)
        hid = act_fn(gate) * up  # [P, I], rows in expert order
    # fp32 per (token, slot): the k slots are summed and rounded once (transformers rounds every slot).
    pair = launch_grouped(
        hid,
        down_i,
        down_t,
        lam,
        rows_per_lam,
        tiles,
        tok,
        None,
        order,
        scale,
        p,
        configs[1],
        skip,
        blend,
        rec[1],
        out_dtype=torch.float32,
    )
    out = common_launch.alloc_output((t, h), x.dtype, x.device)
    common_launch.launch_kernel(
        combine_kernel,
        (t, cdiv(h, COMBINE_BLOCK)),
        (pair, top_k_index, out, t, h),
        dict(TOP_K=k, NUM_EXPERTS=num_experts, BLOCK_H=COMBINE_BLOCK),
    )
    return out


def _with_block_m(cfg: KernelConfig, block_m: int) -> KernelConfig:
    from dataclasses import replace

    return replace(cfg, block_m=block_m)
