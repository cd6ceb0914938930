"""Launcher, eager fast path and `torch.library` custom op (with autograd) for the Triton kernel.

The custom op `dami_kernels::interp_linear_rows` has a fake (meta) implementation, so `torch.compile`
traces through it and CUDA graphs capture it; λ is read from a device tensor inside the kernel (no host
sync). In eager mode without autograd, `interp_linear_triton` calls the launcher directly (the custom
op's dispatch costs more host time than the rest of the call). Every per-shape decision (tile config,
grid, split-K, 64-bit offsets) is a cached `LaunchPlan`, so a decode step costs a dict lookup, one
output allocation and at most two kernel launches (the split-K reduction is the second).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dami_kernels.ops.backend import interpreting
from dami_kernels.ops.checks import lam_per_row
from dami_kernels.ops.configs import KernelConfig, pick_config
from dami_kernels.ops.triton_kernels import interp_linear_kernel, splitk_reduce_kernel

INT32_LIMIT = 2**31
REDUCE_BLOCK = 1024


def _alloc(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Output allocation (the tests replace it with a NaN-filled one to catch unwritten tiles)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _launch(kernel, grid, args, kwargs) -> None:
    """The kernel launch itself (bench/host_overhead.py replaces it to time the host side alone)."""
    kernel[grid](*args, **kwargs)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def tf32_enabled() -> bool:
    """True when the user turned TF32 on for fp32 matmuls through torch's switch (as cuBLAS follows it):
    `torch.backends.cuda.matmul.fp32_precision = "tf32"`, `torch.set_float32_matmul_precision("high")`
    or the legacy `torch.backends.cuda.matmul.allow_tf32 = True`. Default: False (exact fp32)."""
    # The C getters behind torch.backends.cuda.matmul.fp32_precision / torch.backends.fp32_precision /
    # allow_tf32 (the Python properties cost several µs per call; this runs on every fp32 call).
    precision = _precision_getter("cuda", "matmul")
    if precision == "none":
        precision = _precision_getter("generic", "all")
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    try:
        return bool(torch._C._get_cublas_allow_tf32())
    except RuntimeError:  # torch refuses to read the legacy flag after the new API was used
        return False


_precision_getter = torch._C._get_fp32_precision_getter


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
    upcast: bool
    int_args: tuple[int, ...]  # the kernel's integer arguments, in order (M ... stride_on)
    out_shape: tuple[int, ...]  # the fp32 partials [SPLIT_K, M, N] when split (else [M, N])
    kwargs_cache: dict = field(default_factory=dict, compare=False)  # constexpr kwargs per flag set


def needs_int64(m: int, n: int, k: int, x_strides, w_strides, split_k: int, block_k: int) -> bool:
    """True when an element offset of this launch can reach 2**31 (i32 products would wrap).

    Offsets: x rows*stride_xm + k*stride_xk (k runs one tile past K before masking), W likewise, the
    output (split_k partials of M*N) and the split-K reduction over them."""
    k_end = k + block_k
    x_max = (m - 1) * x_strides[0] + k_end * x_strides[1]
    w_max = (n - 1) * w_strides[0] + k_end * w_strides[1]
    out_max = split_k * m * n + REDUCE_BLOCK
    return max(x_max, w_max, out_max) >= INT32_LIMIT


_PLANS: dict[tuple, LaunchPlan] = {}


def plan_launch(m: int, n: int, k: int, dtype: torch.dtype, device: torch.device, seg_len: int,
                x_strides: tuple[int, int], w_strides: tuple[int, int],
                config: KernelConfig | None = None, rows_per_lam: int = 1) -> LaunchPlan:
    """The cached launch plan for an [M, K] x [N, K]^T problem; seg_len and rows_per_lam as in
    `launch_interp_linear`."""
    key = (m, n, k, dtype, device, seg_len, rows_per_lam, x_strides, w_strides, config)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _make_plan(m, n, k, dtype, device, seg_len, rows_per_lam, x_strides, w_strides,
                                        config)
    return plan


def _make_plan(m, n, k, dtype, device, seg_len, rows_per_lam, x_strides, w_strides, config) -> LaunchPlan:
    cfg = config or pick_config(m, n, k, dtype, device, seg_len, k_contiguous=w_strides[1] == 1)
    # Segments: row tiles follow sequence boundaries when a segment fills most of its tiles.
    if cfg.follow_segments(seg_len, m):
        seg, tiles_per_seg = seg_len, _cdiv(seg_len, cfg.block_m)
        num_pid_m = _cdiv(m, seg_len) * tiles_per_seg
    else:
        seg, tiles_per_seg = m, _cdiv(m, cfg.block_m)
        num_pid_m = tiles_per_seg
    split_k = max(1, min(cfg.split_k, _cdiv(k, cfg.block_k)))
    k_per_split = _cdiv(_cdiv(k, split_k), cfg.block_k) * cfg.block_k
    split_k = _cdiv(k, k_per_split)
    grid = (num_pid_m * _cdiv(n, cfg.block_n), split_k)
    int64 = needs_int64(m, n, k, x_strides, w_strides, split_k, cfg.block_k)
    upcast = interpreting() and dtype != torch.float32
    out_shape = (m, n) if split_k == 1 else (split_k, m, n)
    out_strides = (0, n, 1) if split_k == 1 else (m * n, n, 1)
    int_args = (m, n, k, seg, tiles_per_seg, num_pid_m, k_per_split, rows_per_lam) + tuple(x_strides) \
        + tuple(w_strides) + out_strides
    return LaunchPlan(cfg, grid, split_k, seg, tiles_per_seg, num_pid_m, k_per_split, int64, upcast,
                      int_args, out_shape)


def kernel_arguments(plan: LaunchPlan, x2d, w_i, w_t, lam, bias_i, bias_t, out, record_path,
                     skip: bool = True, blend: bool = True, precision: str = "ieee") -> tuple[tuple, dict]:
    """(positional args, keyword args) of `interp_linear_kernel` for `plan` and these tensors (also
    used by scripts/compile_check.py, so that it compiles exactly what runs). out has plan.out_shape."""
    has_bias = bias_i is not None
    args = (
        x2d, w_i, w_t, bias_i if has_bias else w_i, bias_t if has_bias else w_t, lam, out,
        record_path if record_path is not None else lam,
    ) + plan.int_args
    flags = (has_bias, skip, blend, record_path is not None, precision)
    kwargs = plan.kwargs_cache.get(flags)
    if kwargs is None:
        cfg = plan.config
        kwargs = plan.kwargs_cache[flags] = dict(
            HAS_BIAS=has_bias, SKIP=skip, BLEND=blend, UPCAST=plan.upcast, RECORD_PATH=record_path is not None,
            SWAP_AB=cfg.swap_ab, INT64=plan.int64, PRECISION=precision,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
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
        raise ValueError(f"w_i and w_t must have the same strides, got {w_strides} and {w_t.stride()}; "
                         "make both contiguous once (at load time), not per call")
    lead = x.shape[:-1]
    two_d = x.dim() == 2
    if not two_d and not x.is_contiguous():
        x, two_d = x.reshape(-1, k), True  # [M, K] views of any strides are used as is; copies only if needed
    if k == 0:
        return _bias_only(math.prod(lead), x, n, lam, rows_per_lam, bias_i, bias_t).reshape(lead + (n,))
    m = x.numel() // k
    dtype, device = x.dtype, x.device
    plan = plan_launch(m, n, k, dtype, device, seg_len, x.stride() if two_d else (k, 1), w_strides, config,
                       rows_per_lam)
    split = plan.split_k > 1
    y = _alloc(lead + (n,), dtype, device)
    out = _alloc(plan.out_shape, torch.float32, device) if split else y
    if record_path is not None:
        record_path.resize_(plan.grid[0] * plan.grid[1]).fill_(-1)
    precision = "tf32" if dtype == torch.float32 and tf32_enabled() else "ieee"
    args, kwargs = kernel_arguments(plan, x, w_i, w_t, lam, bias_i, bias_t, out, record_path,
                                    skip, blend, precision)
    _launch(interp_linear_kernel, plan.grid, args, kwargs)
    if split:
        _launch(splitk_reduce_kernel, (_cdiv(m * n, REDUCE_BLOCK),), (out, y, m * n),
                dict(SPLIT_K=plan.split_k, INT64=plan.int64, BLOCK=REDUCE_BLOCK))
    return y


class LaunchMemo:
    """A layer's last eager launch, replayed while nothing it depends on changed (decode host time).

    Valid for an x with the same shape, strides, dtype and device, the very same weight, bias and λ
    tensor objects (the λ state hands out one view per buffer and updates it in place; a layer's
    Parameters keep their identity), and the same knowledge of a shared λ (`shared`). Built only for
    single-launch plans (no split-K) on a 2-D or contiguous x with K > 0. A caller that changes tensors
    in place in ways that change strides or dtype (Module._apply) must drop its memo.
    """

    __slots__ = ("shape", "stride", "dtype", "device", "tensors", "shared", "grid", "int_args", "kwargs",
                 "kwargs_tf32")

    def __init__(self, x, tensors: tuple, shared: bool, plan: LaunchPlan, kwargs: dict, kwargs_tf32: dict | None):
        self.shape, self.stride, self.dtype, self.device = x.shape, x.stride(), x.dtype, x.device
        self.tensors, self.shared = tensors, shared  # (w_i, w_t, bias_i, bias_t, lam)
        self.grid, self.int_args, self.kwargs, self.kwargs_tf32 = plan.grid, plan.int_args, kwargs, kwargs_tf32

    def launch(self, x: torch.Tensor) -> torch.Tensor:
        """Replay on x (new data; `matches` holds). Returns [..., N] in x's dtype."""
        y = _alloc(self.shape[:-1] + (self.int_args[1],), self.dtype, self.device)
        kwargs = self.kwargs if self.kwargs_tf32 is None or not tf32_enabled() else self.kwargs_tf32
        w_i, w_t, bias_i, bias_t, lam = self.tensors
        if bias_i is None:
            bias_i, bias_t = w_i, w_t
        _launch(interp_linear_kernel, self.grid, (x, w_i, w_t, bias_i, bias_t, lam, y, lam) + self.int_args, kwargs)
        return y

    def matches(self, x, w_i, w_t, lam, bias_i, bias_t, shared: bool) -> bool:
        t = self.tensors
        return (lam is t[4] and w_i is t[0] and w_t is t[1] and bias_i is t[2] and bias_t is t[3]
                and shared is self.shared
                and x.shape == self.shape and x.stride() == self.stride and x.dtype is self.dtype
                and x.device == self.device)


def make_memo(x, w_i, w_t, lam, bias_i, bias_t, seg_len: int, rows_per_lam: int, shared: bool) -> LaunchMemo | None:
    """The memo of `launch_interp_linear(x, ..., seg_len, rows_per_lam=rows_per_lam)` with its default
    flags, or None where a replay could not be exact (split-K, K = 0, an x the launcher would reshape).
    shared: the caller knew on the host that every row shares one λ (it chose seg_len from that)."""
    k = x.shape[-1]
    if k == 0 or (x.dim() != 2 and not x.is_contiguous()) or w_t.stride() != w_i.stride():
        return None
    m = x.numel() // k
    plan = plan_launch(m, w_i.shape[0], k, x.dtype, x.device, seg_len, x.stride() if x.dim() == 2 else (k, 1),
                       w_i.stride(), None, rows_per_lam)
    if plan.split_k > 1 or m == 0:
        return None
    _, kwargs = kernel_arguments(plan, x, w_i, w_t, lam, bias_i, bias_t, x, None)
    tf32 = kernel_arguments(plan, x, w_i, w_t, lam, bias_i, bias_t, x, None, precision="tf32")[1] \
        if x.dtype == torch.float32 else None
    return LaunchMemo(x, (w_i, w_t, bias_i, bias_t, lam), shared, plan, kwargs, tf32)


def _bias_only(m, x, n, lam, rows_per_lam, bias_i, bias_t) -> torch.Tensor:
    """The K = 0 result for M rows: (1-λ_r) b_I + λ_r b_T per row, or zeros; [M, N] in x's dtype."""
    if bias_i is None:
        return x.new_zeros((m, n))
    lam_r = lam_per_row(lam, rows_per_lam, m).reshape(m, 1)
    return ((1.0 - lam_r) * bias_i.float() + lam_r * bias_t.float()).to(x.dtype)


# --- custom op (torch.compile, autograd) -----------------------------------------------------------

@torch.library.custom_op("dami_kernels::interp_linear_rows", mutates_args=())
def interp_linear_rows_op(
    x2d: torch.Tensor,
    w_i: torch.Tensor,
    w_t: torch.Tensor,
    lam: torch.Tensor,
    bias_i: torch.Tensor | None,
    bias_t: torch.Tensor | None,
    seg_len: int,
    rows_per_lam: int,
) -> torch.Tensor:
    """Custom-op wrapper of `launch_interp_linear`; shapes as there. Returns a new [M, N] tensor."""
    return launch_interp_linear(x2d, w_i, w_t, lam, bias_i, bias_t, seg_len, rows_per_lam=rows_per_lam)


@interp_linear_rows_op.register_fake
def _interp_linear_rows_fake(x2d, w_i, w_t, lam, bias_i, bias_t, seg_len, rows_per_lam):
    return x2d.new_empty((x2d.shape[0], w_i.shape[0]))


def _setup_context(ctx, inputs, output):
    x2d, w_i, w_t, lam, bias_i, bias_t, seg_len, rows_per_lam = inputs
    ctx.save_for_backward(x2d, w_i, w_t, lam, bias_i, bias_t)
    ctx.seg_len, ctx.rows_per_lam = seg_len, rows_per_lam


def _backward(ctx, dy):
    """dx = (1-λ) dy W_I + λ dy W_T (the same fused kernel on the transposed weights); dλ_s = sum over
    the rows r of s of dy_r · (y_T,r - y_I,r); dW_I = ((1-λ) dy)^T x, dW_T = (λ dy)^T x; db likewise."""
    x2d, w_i, w_t, lam, bias_i, bias_t = ctx.saved_tensors
    rpl = ctx.rows_per_lam
    m = x2d.shape[0]
    need = ctx.needs_input_grad
    dx = dw_i = dw_t = dlam = db_i = db_t = None
    if need[0]:
        dx = interp_linear_rows_op(dy.contiguous(), w_i.t(), w_t.t(), lam, None, None, ctx.seg_len, rpl)
    lam_r = lam_per_row(lam, rpl, m).reshape(m, 1)
    dy32 = dy.float()
    if need[1] or need[4]:
        g_i = (1.0 - lam_r) * dy32
        dw_i = (g_i.t() @ x2d.float()).to(w_i.dtype) if need[1] else None
        db_i = g_i.sum(0).to(bias_i.dtype) if need[4] else None
    if need[2] or need[5]:
        g_t = lam_r * dy32
        dw_t = (g_t.t() @ x2d.float()).to(w_t.dtype) if need[2] else None
        db_t = g_t.sum(0).to(bias_t.dtype) if need[5] else None
    if need[3]:
        diff = x2d.float() @ (w_t.float() - w_i.float()).t()
        if bias_i is not None:
            diff = diff + (bias_t.float() - bias_i.float())
        per_row = (dy32 * diff).sum(1)
        if lam.numel() == 1:
            dlam = per_row.sum().reshape(lam.shape)
        else:
            index = torch.arange(m, device=lam.device) // rpl
            dlam = torch.zeros_like(lam, dtype=torch.float32).index_add_(0, index, per_row).to(lam.dtype)
    return dx, dw_i, dw_t, dlam, db_i, db_t, None, None


interp_linear_rows_op.register_autograd(_backward, setup_context=_setup_context)


def interp_linear_triton(x, w_i, w_t, lam, bias_i, bias_t, seg_len: int, rows_per_lam: int) -> torch.Tensor:
    """Entry point of the triton backend. x [..., K] (M = all leading dims); returns [..., N].

    Through the custom op when tracing (torch.compile) or when autograd needs a graph; otherwise the
    launcher is called directly, which saves the op dispatch (most of the host time of a decode call).
    """
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (
            x.requires_grad or w_i.requires_grad or w_t.requires_grad or lam.requires_grad
            or (bias_i is not None and (bias_i.requires_grad or bias_t.requires_grad)))):
        k = x.shape[-1]
        y = interp_linear_rows_op(x.reshape(-1, k), w_i, w_t, lam, bias_i, bias_t, seg_len, rows_per_lam)
        return y.reshape(x.shape[:-1] + (w_i.shape[0],))
    return launch_interp_linear(x, w_i, w_t, lam, bias_i, bias_t, seg_len, None, True, True, None,
                                rows_per_lam=rows_per_lam)
