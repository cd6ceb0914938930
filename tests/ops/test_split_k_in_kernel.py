"""Split-K reduced inside the kernel (one launch per call): every split writes its fp32 partial to a cached
workspace and the program that completes a tile (an atomic counter per tile) sums the partials in split
order, casts, and resets its counter. And the ALIGNED16 flag (16-divisible x row and split strides), which
lets the sm_90 build vectorize the x loads and the stores. Outputs NaN-poisoned, against the fp64 reference."""

from __future__ import annotations

import pytest
import torch
from op_inputs import DEVICE, make

from dami_kernels.ops.common import launch as common_launch
from dami_kernels.ops.common.configs import KernelConfig
from dami_kernels.ops.interp_linear import launch as linear_launch
from dami_kernels.ops.interp_linear.reference import interp_linear_fp64
from numerics import rel_err

pytest.importorskip("triton")

TOL = {torch.float16: 3e-3, torch.bfloat16: 1e-2}


def _cfg(m, split, block_k=32, swap_ab=False):
    return KernelConfig(max(16, 1 << (m - 1).bit_length()), 32, block_k, split_k=split, group_m=1, num_stages=1,
                        swap_ab=swap_ab)  # fmt: skip


def _run(x, w_i, w_t, lam, b_i, b_t, cfg, **kw):
    return linear_launch.launch_interp_linear(x, w_i, w_t, lam.float().contiguous(), b_i, b_t, 1, config=cfg, **kw)


def _counting(monkeypatch):
    launches = []
    real = common_launch.launch_kernel
    monkeypatch.setattr(common_launch, "launch_kernel", lambda *a: (launches.append(a[0]), real(*a)))
    return launches


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("m,k,split", [(1, 203, 2), (5, 203, 4), (16, 97, 3), (33, 250, 5), (64, 130, 5)])
def test_one_launch_matches_fp64_every_path(monkeypatch, dtype, m, k, split):
    """Several splits, odd K (the last split is short), all four paths; one kernel launch per call."""
    launches = _counting(monkeypatch)
    x, w_i, w_t, b_i, b_t = make((m,), 41, k, dtype)
    cfg = _cfg(m, split)
    for lam, path in (
        (torch.rand(m, device=DEVICE), 3),
        (torch.full((m,), 0.6, device=DEVICE), 2),
        (torch.zeros(m, device=DEVICE), 0),
        (torch.ones(m, device=DEVICE), 1),
    ):
        path = 2 if m == 1 and path == 3 else path
        paths = torch.empty(0, dtype=torch.int32, device=DEVICE)
        launches.clear()
        out = _run(x, w_i, w_t, lam, b_i, b_t, cfg, record_path=paths)
        assert len(launches) == 1
        plan = linear_launch.plan_launch(m, 41, k, dtype, x.device, 1, x.stride(), w_i.stride(), cfg)
        assert plan.split_k > 1 and paths.tolist() == [path] * (2 * plan.split_k)
        assert rel_err(out, interp_linear_fp64(x, w_i, w_t, lam, b_i, b_t)) <= TOL[dtype]
        _, cnt = linear_launch.split_buffers(plan, x.device)
        assert not cnt.any(), "the tile counters must be back to zero"


@pytest.mark.parametrize("swap_ab", [False, True])
def test_shared_workspace_reused_and_bit_identical(swap_ab):
    """Two layers of one shape share one workspace and counters; repeated calls give bit-identical results."""
    dtype, m, n, k = torch.bfloat16, 7, 40, 301
    cfg = _cfg(m, 4, swap_ab=swap_ab)
    a = make((m,), n, k, dtype)
    b = make((m,), n, k, dtype)
    lam = torch.rand(m, device=DEVICE)
    plan = linear_launch.plan_launch(m, n, k, dtype, a[0].device, 1, a[0].stride(), a[1].stride(), cfg)
    bufs = linear_launch.split_buffers(plan, a[0].device)

    def call(x, w_i, w_t, b_i, b_t):
        return _run(x, w_i, w_t, lam, b_i, b_t, cfg)

    first_a, first_b = call(*a), call(*b)
    for _ in range(3):
        assert torch.equal(call(*a), first_a)
        assert torch.equal(call(*b), first_b)
    again = linear_launch.split_buffers(plan, a[0].device)
    assert again[0] is bufs[0] and again[1] is bufs[1]
    for (x, w_i, w_t, b_i, b_t), out in ((a, first_a), (b, first_b)):
        assert rel_err(out, interp_linear_fp64(x, w_i, w_t, lam, b_i, b_t)) <= TOL[dtype]


def test_decode_loop_shares_workspaces_per_power_of_two():
    """M = 1..64 on one layer shape: one workspace per power of two of M, never one per M."""
    cfg = KernelConfig(64, 32, 32, split_k=3, group_m=1, num_stages=1)
    dev = torch.device(DEVICE)
    sizes = {
        linear_launch.plan_launch(m, 48, 200, torch.float16, dev, 1, (200, 1), (200, 1), cfg).ws_numel
        for m in range(1, 65)
    }
    assert len(sizes) == 7


def test_memo_replays_a_split_plan():
    """The eager fast path replays split-K plans too (one launch; the cached workspace)."""
    from torch import nn

    from dami_kernels.modules import InterpLinear, LambdaState

    state = LambdaState(torch.tensor([0.2, 0.9]), device=DEVICE)
    lin = nn.Linear(200, 24, device=DEVICE)
    w_t = nn.Parameter(torch.randn(24, 200, device=DEVICE) / 15, requires_grad=False)
    b_t = nn.Parameter(torch.randn(24, device=DEVICE), requires_grad=False)
    layer = InterpLinear.from_linear(lin, state, w_t, b_t, backend="triton")
    with torch.no_grad():
        layer(torch.randn(2, 1, 200, device=DEVICE))
        memo = layer._memo[0]
        assert memo is not None and memo.bufs is not None, "a split-K plan must be replayed"
        for lam in ([0.1, 0.7], [0.0, 1.0], [0.5, 0.6]):
            state.set(torch.tensor(lam, device=DEVICE))
            x = torch.randn(2, 1, 200, device=DEVICE)
            y = layer(x)
            assert layer._memo[0] is memo
            ref = interp_linear_fp64(
                x, layer.weight, layer.weight_t, torch.tensor(lam, device=DEVICE), layer.bias, layer.bias_t
            )
            assert rel_err(y, ref) < 1e-5


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("row_stride,aligned", [(None, True), (144, True), (139, False)])
@pytest.mark.parametrize("split", [1, 3])
def test_aligned16_flag(dtype, row_stride, aligned, split):
    """ALIGNED16 exactly when x's row stride is a multiple of 16 (the split stride always is); results are
    right either way, including x views with odd row strides."""
    m, n, k = 9, 36, 128
    x, w_i, w_t, b_i, b_t = make((m,), n, k, dtype)
    if row_stride is not None:
        x = torch.randn(m, row_stride, device=DEVICE).to(dtype)[:, 3 : 3 + k]
    cfg = _cfg(m, split)
    plan = linear_launch.plan_launch(m, n, k, dtype, x.device, 1, x.stride(), w_i.stride(), cfg)
    assert plan.aligned16 is aligned
    assert plan.int_args[-3] % 16 == 0
    _, kwargs = linear_launch.kernel_arguments(plan, x, w_i, w_t, x, b_i, b_t, x, None)
    assert kwargs["ALIGNED16"] is aligned and kwargs["SPLIT"] is (split > 1)
    lam = torch.rand(m, device=DEVICE)
    assert rel_err(_run(x, w_i, w_t, lam, b_i, b_t, cfg), interp_linear_fp64(x, w_i, w_t, lam, b_i, b_t)) <= TOL[dtype]
