"""Launcher and eager fast path for the Triton kernel.

Every per-shape decision (tile config, grid, split-K, 64-bit offsets) is a cached `LaunchPlan`, so a decode step
costs a dict lookup, one output allocation and one kernel launch (split-K reduces inside the kernel, in a
cached workspace). `LaunchMemo` replays a layer's previous launch while nothing it depends on changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from dami_kernels.ops.common import launch as common_launch
from dami_kernels.ops.common import triton_direct
from dami_kernels.ops.common.backend import interpreting
from dami_kernels.ops.common.checks import lam_per_row
from dami_kernels.ops.common.configs import KernelConfig, pick_config
from dami_kernels.ops.common.launch import INT32_LIMIT, cdiv
from dami_kernels.ops.interp_linear.kernel import interp_linear_kernel


@dataclass(frozen=True)
class LaunchPlan:
    """Everything about one launch that depends only on shapes, strides, dtype and device."""

    config: KernelConfig
    grid: tuple[int, int]
    split_k: int
    seg: int
    tiles_per_seg: int
    num_pid_m: int
    k_per_split: int
    int64: bool
    aligned16: bool  # stride_xm and stride_os are multiples of 16 (the kernel's ALIGNED16)
    upcast: bool
    int_args: tuple[int, ...]  # the kernel's integer arguments, in order (M ... stride_on)
    ws_numel: int  # fp32 workspace elements of a split-K launch (0 when not split)
    kwargs_cache: dict = field(default_factory=dict, compare=False)  # constexpr kwargs per flag set


def needs_int64(m: int, n: int, k: int, x_strides, w_strides, split_k: int, block_k: int) -> bool:
    """True when an element offset of this launch can reach 2**31 (i32 products would wrap).

    Offsets: x rows*stride_xm + k*stride_xk (k runs one tile past K before masking), W likewise, the
    output and the split-K workspace (split_k slices of at most `split_stride(m, n)`)."""
    k_end = k + block_k
    x_max = (m - 1) * x_strides[0] + k_end * x_strides[1]
    w_max = (n - 1) * w_strides[0] + k_end * w_strides[1]
    out_max = m * n if split_k == 1 else split_k * split_stride(m, n)
    return max(x_max, w_max, out_max) >= INT32_LIMIT


def split_stride(m: int, n: int) -> int:
    """Elements per split slice of the workspace: M*N for M rounded up to a power of two (so a decode loop
    shares one workspace per power of two), a multiple of 16 (aligned slices)."""
    return cdiv(_next_pow2(m) * n, 16) * 16


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


_PLANS: dict[tuple, LaunchPlan] = {}


def split_buffers(plan: LaunchPlan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(workspace, counters) of a split-K plan on `device`, cached (`common.launch.split_workspace`)."""
    return common_launch.split_workspace(device, plan.ws_numel), common_launch.split_counters(device, plan.grid[0])


def plan_launch(
    m: int,
    n: int,
    k: int,
    dtype: torch.dtype,
    device: torch.device,
    seg_len: int,
    x_strides: tuple[int, ...],
    w_strides: tuple[int, ...],
    config: KernelConfig | None = None,
    rows_per_lam: int = 1,
) -> LaunchPlan:
    """The cached launch plan for an [M, K] x [N, K]^T problem; seg_len and rows_per_lam as in
    `launch_interp_linear`."""
    key = (m, n, k, dtype, device, seg_len, rows_per_lam, x_strides, w_strides, config)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _make_plan(m, n, k, dtype, device, seg_len, rows_per_lam, x_strides, w_strides, config)
    return plan


def _make_plan(m, n, k, dtype, device, seg_len, rows_per_lam, x_strides, w_strides, config) -> LaunchPlan:
    cfg = config or pick_config(m, n, k, dtype, device, seg_len, k_contiguous=w_strides[1] == 1)
    # Segments: row tiles follow sequence boundaries when a segment fills most of its tiles.
    if cfg.follow_segments(seg_len, m):
        seg, tiles_per_seg = seg_len, cdiv(seg_len, cfg.block_m)
        num_pid_m = cdiv(m, seg_len) * tiles_per_seg
    else:
        seg, tiles_per_seg = m, cdiv(m, cfg.block_m)
        num_pid_m = tiles_per_seg
    split_k = max(1, min(cfg.split_k, cdiv(k, cfg.block_k)))
    k_per_split = cdiv(cdiv(k, split_k), cfg.block_k) * cfg.block_k
    split_k = cdiv(k, k_per_split)
    grid = (num_pid_m * cdiv(n, cfg.block_n), split_k)
    int64 = needs_int64(m, n, k, x_strides, w_strides, split_k, cfg.block_k)
    upcast = interpreting() and dtype != torch.float32
    out_strides = (0 if split_k == 1 else split_stride(m, n), n, 1)
    int_args = (
        (m, n, k, seg, tiles_per_seg, num_pid_m, k_per_split, rows_per_lam)
        + tuple(x_strides)
        + tuple(w_strides)
        + out_strides
    )
    aligned16 = x_strides[0] % 16 == 0 and out_strides[0] % 16 == 0
    ws_numel = split_k * out_strides[0] if split_k > 1 else 0
    return LaunchPlan(
        cfg, grid, split_k, seg, tiles_per_seg, num_pid_m, k_per_split, int64, aligned16, upcast, int_args, ws_numel
    )


def kernel_arguments(
    plan: LaunchPlan,
    x2d,
    w_i,
    w_t,
    lam,
    bias_i,
    bias_t,
    out,
    record_path,
    skip: bool = True,
    blend: bool = True,
    precision: str = "ieee",
    split_bufs: tuple | None = None,
) -> tuple[tuple, dict]:
    """(positional args, keyword args) of `interp_linear_kernel` for `plan` and these tensors (also
    used by scripts/compile_check.py, so that it compiles exactly what runs). out [M, N] contiguous;
    split_bufs: `split_buffers(plan, device)` when plan.split_k > 1."""
    has_bias = bias_i is not None
    args = (
        (
            x2d,
            w_i,
            w_t,
            bias_i if has_bias else w_i,
            bias_t if has_bias else w_t,
            lam,
            out,
            record_path if record_path is not None else lam,
        )
        + (split_bufs or (out, lam))
        + plan.int_args
    )
    flags = (has_bias, skip, blend, record_path is not None, precision)
    kwargs = plan.kwargs_cache.get(flags)
    if kwargs is None:
        cfg = plan.config
        kwargs = plan.kwargs_cache[flags] = dict(
            HAS_BIAS=has_bias,
            SPLIT=plan.split_k > 1,
            SKIP=skip,
            BLEND=blend,
            UPCAST=plan.upcast,
            RECORD_PATH=record_path is not None,
            SWAP_AB=cfg.swap_ab,
            INT64=plan.int64,
            ALIGNED16=plan.aligned16,
            PRECISION=precision,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            BLOCK_K=cfg.block_k,
            GROUP_M=cfg.group_m,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
    return args, kwargs


def launch_interp_linear(
    x: torch.Tensor,
    w_i: torch.Tensor,
    w_t: torch.Tensor,
    lam: torch.Tensor,
    bias_i: torch.Tensor | None,
    bias_t: torch.Tensor | None,
    seg_len: int,
    config: KernelConfig | None = None,
    skip: bool = True,
    blend: bool = True,
    record_path: torch.Tensor | None = None,
    *,
    rows_per_lam: int = 1,
) -> torch.Tensor:
    """Run the kernel. x [M, K] (any strides) or [..., K] (M = all leading dims); w [N, K] (w_i and w_t
    with the same strides); biases [N] | None.

    lam: fp32 contiguous [S]; row r uses lam[r // rows_per_lam] (rows_per_lam=1: per row; T: per
    sequence of T rows; >= M with S = 1: one λ for all).
    seg_len: rows per segment that shares one λ (M when λ is a scalar; 1 when nothing is known).
    config: a fixed tile config (tests and benchmarks); default `pick_config`. skip/blend switch the
    endpoint-skip and blend-in-registers paths (tests turn them off to reach the dual path).
    record_path: an int32 tensor that receives the path each program took (0: W_I only, 1: W_T only,
    2: blend, 3: dual); tests use it.
    Returns [..., N] in x's dtype. K = 0 gives the blended bias (zeros without bias), as the reference.
    """
    k = x.shape[-1]
    n = w_i.shape[0]
    w_strides = w_i.stride()
    if w_t.stride() != w_strides:
        raise ValueError(
            f"w_i and w_t must have the same strides, got {w_strides} and {w_t.stride()}; "
            "make both contiguous once (at load time), not per call"
        )
    lead = x.shape[:-1]
    two_d = x.dim() == 2
    if not two_d and not x.is_contiguous():
        x, two_d = x.reshape(-1, k), True  # [M, K] views of any strides are used as is; copies only if needed
    if k == 0:
        return _bias_only(math.prod(lead), x, n, lam, rows_per_lam, bias_i, bias_t).reshape(lead + (n,))
    m = x.numel() // k
    dtype, device = x.dtype, x.device
    plan = plan_launch(
        m, n, k, dtype, device, seg_len, x.stride() if two_d else (k, 1), w_strides, config, rows_per_lam
    )
    y = common_launch.alloc_output(lead + (n,), dtype, device)
    bufs = split_buffers(plan, device) if plan.split_k > 1 else None
    if record_path is not None:
        record_path.resize_(plan.grid[0] * plan.grid[1]).fill_(-1)
    precision = "tf32" if dtype == torch.float32 and common_launch.tf32_enabled() else "ieee"
    args, kwargs = kernel_arguments(
        plan, x, w_i, w_t, lam, bias_i, bias_t, y, record_path, skip, blend, precision, bufs
    )
    common_launch.launch_kernel(interp_linear_kernel, plan.grid, args, kwargs)
    return y


class LaunchMemo:
    """A layer's last eager launch, replayed while nothing it depends on changed (decode host time).

    Valid for an x with the same shape, strides, dtype and device, the very same weight, bias and λ
    tensor objects (the λ state hands out one view per buffer and updates it in place; a layer's
    Parameters keep their identity), and the same knowledge of a shared λ (`shared`). Built for a 2-D or
    contiguous x with K > 0 (split-K plans included: their workspace is cached, not allocated per call).
    A caller that changes tensors in place in ways that change strides or dtype (Module._apply) must drop
    its memo.

    On a GPU the first replay also keeps the compiled kernel it ran (`triton_direct.direct_launcher`); later
    replays launch it directly, with only x and the output changing (not for the tf32 variant, not while
    `launch_kernel` is replaced, never under TRITON_INTERPRET).
    """

    __slots__ = (
        "shape",
        "stride",
        "dtype",
        "device",
        "tensors",
        "shared",
        "grid",
        "int_args",
        "bufs",
        "kwargs",
        "kwargs_tf32",
        "direct",
    )

    def __init__(
        self, x, tensors: tuple, shared: bool, plan: LaunchPlan, bufs: tuple | None, kwargs: dict, kwargs_tf32
    ):
        self.shape, self.stride, self.dtype, self.device = x.shape, x.stride(), x.dtype, x.device
        self.tensors, self.shared = tensors, shared  # (w_i, w_t, bias_i, bias_t, lam)
        self.grid, self.int_args, self.kwargs, self.kwargs_tf32 = plan.grid, plan.int_args, kwargs, kwargs_tf32
        self.bufs = bufs  # (workspace, counters) of a split-K plan, else None
        # triton_direct.DirectLauncher; False: none to be had; None: not tried yet
        self.direct: triton_direct.DirectLauncher | Literal[False] | None = None

    def launch(self, x: torch.Tensor) -> torch.Tensor:
        """Replay on x (new data; `matches` holds). Returns [..., N] in x's dtype."""
        y = common_launch.alloc_output(self.shape[:-1] + (self.int_args[1],), self.dtype, self.device)
        kwargs = self.kwargs if self.kwargs_tf32 is None or not common_launch.tf32_enabled() else self.kwargs_tf32
        direct = self.direct
        if direct and kwargs is self.kwargs and direct(x, y):
            return y
        w_i, w_t, bias_i, bias_t, lam = self.tensors
        if bias_i is None:
            bias_i, bias_t = w_i, w_t
        bufs = self.bufs or (y, lam)
        args = (x, w_i, w_t, bias_i, bias_t, lam, y, lam) + bufs + self.int_args
        common_launch.launch_kernel(interp_linear_kernel, self.grid, args, kwargs)
        if direct is None and kwargs is self.kwargs:
            self.direct = self._direct_launcher(args, kwargs) or False
        return y

    def _direct_launcher(self, args: tuple, kwargs: dict):
        """The compiled kernel's direct launcher for this memo, or None (see the class docstring)."""
        if interpreting() or common_launch.launch_seam_replaced():
            return None
        varying = ((0,), (6,) if self.bufs else (6, 8))  # x; the output (also the split slots when not split)
        return triton_direct.direct_launcher(interp_linear_kernel, self.grid, args, kwargs, varying)

    def matches(self, x, w_i, w_t, lam, bias_i, bias_t, shared: bool) -> bool:
        t = self.tensors
        return (
            lam is t[4]
            and w_i is t[0]
            and w_t is t[1]
            and bias_i is t[2]
            and bias_t is t[3]
            and shared is self.shared
            and x.shape == self.shape
            and x.stride() == self.stride
            and x.dtype is self.dtype
            and x.device == self.device
        )


def make_memo(x, w_i, w_t, lam, bias_i, bias_t, seg_len: int, rows_per_lam: int, shared: bool) -> LaunchMemo | None:
    """The memo of `launch_interp_linear(x, ..., seg_len, rows_per_lam=rows_per_lam)` with its default
    flags, or None where a replay could not be exact (K = 0, an x the launcher would reshape).
    shared: the caller knew on the host that every row shares one λ (it chose seg_len from that)."""
    k = x.shape[-1]
    if k == 0 or (x.dim() != 2 and not x.is_contiguous()) or w_t.stride() != w_i.stride():
        return None
    m = x.numel() // k
    plan = plan_launch(
        m,
        w_i.shape[0],
        k,
        x.dtype,
        x.device,
        seg_len,
        x.stride() if x.dim() == 2 else (k, 1),
        w_i.stride(),
        None,
        rows_per_lam,
    )
    if m == 0:
        return None
    bufs = split_buffers(plan, x.device) if plan.split_k > 1 else None
    _, kwargs = kernel_arguments(plan, x, w_i, w_t, lam, bias_i, bias_t, x, None, split_bufs=bufs)
    tf32 = (
        kernel_arguments(plan, x, w_i, w_t, lam, bias_i, bias_t, x, None, precision="tf32", split_bufs=bufs)[1]
        if x.dtype == torch.float32
        else None
    )
    return LaunchMemo(x, (w_i, w_t, bias_i, bias_t, lam), shared, plan, bufs, kwargs, tf32)


def _bias_only(m, x, n, lam, rows_per_lam, bias_i, bias_t) -> torch.Tensor:
    """The K = 0 result for M rows: (1-λ_r) b_I + λ_r b_T per row, or zeros; [M, N] in x's dtype."""
    if bias_i is None:
        return x.new_zeros((m, n))
    lam_r = lam_per_row(lam, rows_per_lam, m).reshape(m, 1)
    return ((1.0 - lam_r) * bias_i.float() + lam_r * bias_t.float()).to(x.dtype)
