"""Launch plumbing that both op families share: the two seams (output allocation, kernel launch) that tests,
benchmarks and scripts/offline_compile/ replace, and the fp32 precision switch.

Callers use the seams through the module (`launch.alloc_output(...)`), so that replacing them here reaches
every launcher.
"""

from __future__ import annotations

import torch

INT32_LIMIT = 2**31
REDUCE_BLOCK = 1024


def alloc_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Output allocation (the tests replace it with a NaN-filled one to catch unwritten tiles)."""
    return torch.empty(shape, dtype=dtype, device=device)


def launch_kernel(kernel, grid, args, kwargs) -> None:
    """The kernel launch itself (bench/host_overhead.py replaces it to time the host side alone;
    scripts/offline_compile/harness.py records the launches through it)."""
    kernel[grid](*args, **kwargs)


_LAUNCH_KERNEL = launch_kernel


def launch_seam_replaced() -> bool:
    """True while `launch_kernel` is replaced (stubbed or recorded): launches must then go through it."""
    return launch_kernel is not _LAUNCH_KERNEL


# Split-K workspaces, fp32 [numel] per (device, numel), and tile counters, int32 zeros [n] per (device, n):
# allocated once (no allocation per call, so CUDA-graph replays keep valid addresses) and shared by every
# launch of that size. Launches that share one must not run concurrently (launches on one stream do not).
_WORKSPACES: dict[tuple, torch.Tensor] = {}
_COUNTERS: dict[tuple, torch.Tensor] = {}


def split_workspace(device: torch.device, numel: int) -> torch.Tensor:
    """The cached fp32 split-K workspace of `numel` elements on `device`."""
    ws = _WORKSPACES.get((device, numel))
    if ws is None:
        ws = _WORKSPACES[(device, numel)] = alloc_output((numel,), torch.float32, device)
    return ws


def split_counters(device: torch.device, n: int) -> torch.Tensor:
    """The cached int32 tile counters [n] on `device`, zeros (the kernels that use them leave them zero)."""
    cnt = _COUNTERS.get((device, n))
    if cnt is None:
        cnt = _COUNTERS[(device, n)] = torch.zeros(n, dtype=torch.int32, device=device)
    return cnt


def next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def tf32_enabled() -> bool:
    """True when the user turned TF32 on for fp32 matmuls through torch's switch (as cuBLAS follows it):
    `torch.backends.cuda.matmul.fp32_precision = "tf32"`, `torch.set_float32_matmul_precision("high")`
    or the legacy `torch.backends.cuda.matmul.allow_tf32 = True`. Default: False (exact fp32)."""
    # The C getters behind torch.backends.cuda.matmul.fp32_precision / torch.backends.fp32_precision /
    # allow_tf32 (read directly: the Python properties are far slower, and this runs on every fp32 call).
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
