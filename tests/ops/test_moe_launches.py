"""The experts launcher's launches and routing: five launches per call (counted through the launch seam and
a dispatch-mode count of torch ops), the one-program routing kernel against the torch tile table, tiles that
follow sequences where λ is per sequence, split-K inside the grouped kernel, an act_fn outside the fused one."""

import pytest
import torch
import torch.nn.functional as F
from op_inputs import DEVICE
from test_moe_ops import make_moe, mlp_tol

from dami_kernels.benchmarks.launches import count_launches
from dami_kernels.ops import interp_experts_fp64, triton_available
from dami_kernels.ops.common import launch as common_launch
from dami_kernels.ops.common.configs import KernelConfig
from numerics import rel_err

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
SPLIT = (KernelConfig(16, 16, 16, split_k=2, num_stages=1), KernelConfig(16, 16, 16, split_k=2, num_stages=1))


def _call(args, lam, rpl, configs=None, act_fn=F.silu):
    from dami_kernels.ops.interp_experts.launch import interp_experts_triton

    return interp_experts_triton(*args, lam, rpl, act_fn, configs=configs)


@pytest.mark.parametrize("configs", [None, SPLIT])
def test_five_launches_per_call(configs):
    """route, gate_up (activation fused), down, combine, and the sort: no other torch op launches a kernel."""
    args = make_moe(t=12, h=32, i=16, e=4, k=2)
    lam = torch.tensor([0.2, 0.7, 1.0], device=DEVICE)
    _call(args, lam, 4, configs)  # first call: the cached split counters are allocated
    count, out = count_launches(lambda: _call(args, lam, 4, configs), run_kernels=True)
    assert count.triton == ["route_kernel", "interp_grouped_kernel", "interp_grouped_kernel", "combine_kernel"]
    assert count.ops == ["sort.stable"] and count.total == 5
    assert rel_err(out, interp_experts_fp64(*args, lam)) < 1e-5


def test_route_kernel_matches_the_torch_tile_table():
    """Experts only (one group): the tiles, tokens and weights of the torch construction."""
    from dami_kernels.ops.interp_experts.launch import route, tile_table

    t, k, e, bm = 37, 3, 5, 16
    idx = torch.rand(t, e, device=DEVICE).topk(k, 1).indices
    idx[3, 1] = e  # held elsewhere: no tile
    w = torch.rand(t, k, device=DEVICE)
    order, tiles, tok, scale = route(idx, w, e, bm, t)
    ref = tile_table(idx.reshape(-1)[order], e, bm)
    ref[:, 2] = torch.minimum(ref[:, 2], ref[:, 1] + bm)  # the torch table ends tiles at the expert's end
    used = tiles[:, 1] < tiles[:, 2]
    ref_used = ref[:, 1] < ref[:, 2]
    assert torch.equal(tiles[used], ref[ref_used]) and not tiles[~used].any()
    assert torch.equal(tok.long(), order // k) and torch.equal(scale, w.reshape(-1)[order])


def test_tiles_hold_one_sequence_where_lambda_is_per_sequence():
    """Per-sequence λ: no tile straddles two sequences (all tiles blend, endpoints skip); per-token λ: tiles
    split by expert only. Stable: rows stay in token order within a tile; deterministic across calls."""
    from dami_kernels.ops.interp_experts.launch import route

    t, k, e, bm, rpl = 40, 2, 3, 16, 10
    idx = torch.rand(t, e, device=DEVICE).topk(k, 1).indices
    w = torch.rand(t, k, device=DEVICE)
    order, tiles, tok, _ = route(idx, w, e, bm, rpl)
    flat = idx.reshape(-1)
    for ex, lo, hi in tiles.tolist():
        if lo < hi:
            rows = tok[lo:hi].long()
            assert (rows // rpl).unique().numel() == 1 and (flat[order[lo:hi]] == ex).all()
            assert (rows.diff() > 0).all() and hi - lo <= bm
    covered = sum(hi - lo for _, lo, hi in tiles.tolist() if lo < hi)
    assert covered == t * k
    again = route(idx, w, e, bm, rpl)
    assert all(torch.equal(a, b) for a, b in zip((order, tiles, tok), again[:3], strict=True))
    _, tiles_tok, _, _ = route(idx, w, e, bm, t)  # one group: segments are experts
    assert (tiles_tok[:, 1] < tiles_tok[:, 2]).sum() < (tiles[:, 1] < tiles[:, 2]).sum()


def test_per_sequence_lambda_takes_blend_and_endpoint_paths():
    from dami_kernels.ops.interp_experts.launch import interp_experts_triton

    t = 32
    args = make_moe(t=t, h=20, i=12, e=3, k=2)
    lam = torch.tensor([0.0, 0.4, 1.0, 0.65], device=DEVICE)
    paths = (torch.empty(0, dtype=torch.int32, device=DEVICE), torch.empty(0, dtype=torch.int32, device=DEVICE))
    cfg = (KernelConfig(16, 16, 16, num_stages=1), KernelConfig(16, 16, 16, num_stages=1))
    out = interp_experts_triton(*args, lam, t // 4, F.silu, configs=cfg, record_paths=paths)
    assert rel_err(out, interp_experts_fp64(*args, lam)) < 1e-5
    for p in paths:
        assert set(p.tolist()) - {-2} == {0, 1, 2}  # never the dual path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_k_in_kernel_leaves_counters_zero_and_is_deterministic(dtype):
    args = make_moe(t=9, h=40, i=24, e=3, k=2, dtype=dtype)
    lam = torch.rand(9, device=DEVICE)
    first = _call(args, lam, 1, SPLIT)
    assert rel_err(first, interp_experts_fp64(*args, lam)) < mlp_tol(args, lam, dtype)
    assert torch.equal(first, _call(args, lam, 1, SPLIT))
    assert all(not c.any() for c in common_launch._COUNTERS.values())


def test_unfused_activation_runs_in_torch():
    args = make_moe(t=7, h=18, i=10, e=3, k=2)
    lam = torch.rand(7, device=DEVICE)
    count, out = count_launches(lambda: _call(args, lam, 1, act_fn=F.gelu), run_kernels=True)
    assert rel_err(out, interp_experts_fp64(*args, lam, act_fn=F.gelu)) < 1e-5
    assert count.total == 7  # + gelu, mul (chunk is a view)
    assert torch.equal(_call(args, lam, 1, act_fn=torch.nn.SiLU()), _call(args, lam, 1))
