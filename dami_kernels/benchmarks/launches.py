"""Counting the device-kernel launches of one call on the CPU: Triton launches through the
`common.launch.launch_kernel` seam, and the torch ops that would launch a CUDA kernel (every dispatched aten
op except views, allocations and metadata ops), through a TorchDispatchMode.

The count is per torch op: an op that runs several CUDA kernels (a radix sort) counts once; `ops` names them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dami_kernels.ops.common import launch as common_launch

# aten ops that launch no kernel: allocations without a fill, shape/metadata ops, splits into views.
_NO_KERNEL = {
    "empty.memory_format",
    "empty_strided.default",
    "resize_.default",
    "split.Tensor",
    "split_with_sizes.default",
    "unbind.int",
    "chunk.default",
    "sym_size.int",
    "sym_stride.int",
    "sym_numel.default",
    "is_same_size.default",
}


@dataclass
class LaunchCount:
    triton: list[str] = field(default_factory=list)  # kernel names, in launch order
    ops: list[str] = field(default_factory=list)  # aten ops that launch a kernel, in order

    @property
    def total(self) -> int:
        return len(self.triton) + len(self.ops)


class _OpCounter(TorchDispatchMode):
    def __init__(self, ops: list[str]):
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = f"{func.overloadpacket.__name__}.{func._overloadname}"
        if not func.is_view and name not in _NO_KERNEL:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def count_launches(fn: Callable[[], object], run_kernels: bool = False) -> tuple[LaunchCount, object]:
    """(the launches of fn(), its result); allocations through the `alloc_output` seam are not counted.
    run_kernels=False records the Triton launches without running them (their outputs stay unwritten; valid
    for launchers that take no data-dependent host decision)."""
    count = LaunchCount()
    real = common_launch.launch_kernel

    def record(kernel, grid, args, kwargs):
        count.triton.append(getattr(kernel, "fn", kernel).__name__)
        if run_kernels:
            with torch.utils._python_dispatch._disable_current_modes():
                real(kernel, grid, args, kwargs)

    real_alloc = common_launch.alloc_output

    def alloc(shape, dtype, device):  # an allocation, not a launch (whatever fill a test's seam adds)
        with torch.utils._python_dispatch._disable_current_modes():
            return real_alloc(shape, dtype, device)

    common_launch.launch_kernel, common_launch.alloc_output = record, alloc
    try:
        with _OpCounter(count.ops):
            result = fn()
    finally:
        common_launch.launch_kernel, common_launch.alloc_output = real, real_alloc
    return count, result
