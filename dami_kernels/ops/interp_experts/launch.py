"""Launcher of the grouped dual-weight kernel: the interpolated experts MLP on the Triton backend.

`interp_experts_triton` sorts the T·k token-expert pairs by expert and builds the tile table on the
device (no host sync, so the launch needs no data-dependent host decision), then runs two grouped
launches: gate_up(λ) on the gathered token rows, the activation in torch, and down(λ) whose epilogue
multiplies by the routing weight and stores each pair's row back in (token, slot) order, in fp32; the k
slots of a token are summed in fp32 and rounded once at the end (a fixed order, no atomics).
"""

from __future__ import annotations

import torch

from dami_kernels.ops.common import launch as common_launch
from dami_kernels.ops.common.backend import interpreting
from dami_kernels.ops.common.configs import KernelConfig, pick_config
from dami_kernels.ops.common.launch import INT32_LIMIT, REDUCE_BLOCK, cdiv
from dami_kernels.ops.common.tiles import splitk_reduce_kernel
from dami_kernels.ops.interp_experts.kernel import interp_grouped_kernel
from dami_kernels.ops.interp_experts.torch_path import sort_by_expert


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


def _needs_int64(x: torch.Tensor, w: torch.Tensor, out_rows: int, split_k: int, block_k: int) -> bool:
    """True when an element offset of this launch can reach 2**31 (see interp_linear.launch.needs_int64)."""
    k_end = w.shape[2] + block_k
    x_max = (x.shape[0] - 1) * x.stride(0) + k_end * x.stride(1)
    w_max = (w.shape[0] - 1) * w.stride(0) + (w.shape[1] - 1) * w.stride(1) + k_end * w.stride(2)
    out_max = split_k * out_rows * w.shape[1] + REDUCE_BLOCK
    return max(x_max, w_max, out_max) >= INT32_LIMIT


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
) -> torch.Tensor:
    """out[dst_p] = scale_p · x[src_p] W_e(λ_{tok_p})^T for every sorted row p; returns [out_rows, N] in
    out_dtype (default x's dtype).

    x [*, K]; w_i/w_t [E, N, K] (same strides); lam fp32 [S], token t reads lam[t // rows_per_lam];
    tiles from `tile_table`; tok [P] int32; src/dst [P] int32 or None (row p itself); scale [P] fp32
    or None. config: the tile config (its block_m must be the one `tiles` was built with)."""
    if w_t.stride() != w_i.stride():
        raise ValueError(f"w_i and w_t must have the same strides, got {w_i.stride()} and {w_t.stride()}")
    p = tok.numel()
    _, n, k = w_i.shape
    dtype, device = x.dtype, x.device
    out_dtype = out_dtype or dtype
    split_k = max(1, min(config.split_k, cdiv(k, config.block_k)))
    k_per_split = cdiv(cdiv(k, split_k), config.block_k) * config.block_k
    split_k = cdiv(k, k_per_split)
    y = common_launch.alloc_output((out_rows, n), out_dtype, device)
    out = common_launch.alloc_output((split_k, out_rows, n), torch.float32, device) if split_k > 1 else y
    nt = tiles.shape[0]
    grid = (nt * cdiv(n, config.block_n), split_k)
    if record_path is not None:
        record_path.resize_(grid[0] * grid[1]).fill_(-1)
    int64 = _needs_int64(x, w_i, out_rows, split_k, config.block_k)
    precision = "tf32" if dtype == torch.float32 and common_launch.tf32_enabled() else "ieee"
    stride_os = out_rows * n if split_k > 1 else 0
    common_launch.launch_kernel(
        interp_grouped_kernel,
        grid,
        (
            x,
            w_i,
            w_t,
            lam,
            out,
            tiles,
            src if src is not None else tok,
            tok,
            dst if dst is not None else tok,
            scale if scale is not None else lam,
            record_path if record_path is not None else tok,
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
            n,
            1,
        ),
        dict(
            GATHER=src is not None,
            SCATTER=dst is not None,
            HAS_SCALE=scale is not None,
            SKIP=skip,
            BLEND=blend,
            UPCAST=interpreting() and dtype != torch.float32,
            RECORD_PATH=record_path is not None,
            SWAP_AB=config.swap_ab,
            INT64=int64,
            PRECISION=precision,
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            BLOCK_K=config.block_k,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        ),
    )
    if split_k > 1:
        mn = out_rows * n
        common_launch.launch_kernel(
            splitk_reduce_kernel,
            (cdiv(mn, REDUCE_BLOCK),),
            (out, y, mn),
            dict(SPLIT_K=split_k, INT64=int64, BLOCK=REDUCE_BLOCK),
        )
    return y


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
    order, experts = sort_by_expert(top_k_index)
    tiles = tile_table(experts, num_experts, configs[0].block_m)
    tok = (order // k).to(torch.int32)
    hid = launch_grouped(
        x, gate_up_i, gate_up_t, lam, rows_per_lam, tiles, tok, tok, None, None, p, configs[0], skip, blend, rec[0]
    )
    gate, up = hid.chunk(2, dim=-1)
    act = act_fn(gate) * up  # [P, I], rows in expert order
    scale = top_k_weights.reshape(-1)[order].to(torch.float32)
    # fp32 per (token, slot): the k slots are summed and rounded once (transformers rounds every slot).
    y = launch_grouped(
        act,
        down_i,
        down_t,
        lam,
        rows_per_lam,
        tiles,
        tok,
        None,
        order.to(torch.int32),
        scale,
        p,
        configs[1],
        skip,
        blend,
        rec[1],
        out_dtype=torch.float32,
    )
    y = y.view(t, k, h)
    # A pair routed to expert id E (transformers' marker for an expert held elsewhere) got no tile.
    y = torch.where((top_k_index < num_experts).unsqueeze(-1), y, 0.0)
    return y.sum(1, dtype=torch.float32).to(x.dtype)


def _with_block_m(cfg: KernelConfig, block_m: int) -> KernelConfig:
    from dataclasses import replace

    return replace(cfg, block_m=block_m)
