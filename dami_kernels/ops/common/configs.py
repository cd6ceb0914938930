"""Tile configs for the interpolated-linear kernel, chosen per (N, K, M bucket, dtype, device).

No autotuning runs at call time: a config comes from a table tuned offline on a GPU
(`dami_kernels/ops/tuned/<device name>.json`, written by `scripts/tune_kernels.py`; the environment
variable DAMI_TUNED_TABLE names another file) or, when the table has no entry, from the heuristics
below. Both are cached, so a decode loop whose M grows by one per
step reuses the same config for a whole M bucket and never re-tunes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch

TUNED_DIR = Path(__file__).parents[1] / "tuned"  # dami_kernels/ops/tuned/
M_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096)
DECODE_MAX_M = 64  # up to here one row tile covers every row and split-K streams each weight once


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    swap_ab: bool = False  # compute tiles as W @ x^T (see common.tiles._dot_xw)

    def follow_segments(self, seg_len: int, m: int) -> bool:
        """Tile per segment (sequence) when segments are shorter than M and fill >= 1/2 of their tiles."""
        if seg_len <= 1 or seg_len >= m:
            return False
        tiles = -(-seg_len // self.block_m)
        return 2 * seg_len >= tiles * self.block_m


def m_bucket(m: int) -> int:
    """The smallest bucket >= m (the last bucket for larger m)."""
    for b in M_BUCKETS:
        if m <= b:
            return b
    return M_BUCKETS[-1]


@cache
def _device_key(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
    return device.type


def table_key(n: int, k: int, bucket: int, dtype: torch.dtype) -> str:
    return f"{n}x{k}:{bucket}:{str(dtype).removeprefix('torch.')}"


@cache
def _tuned_table(device_key: str) -> dict:
    override = os.environ.get("DAMI_TUNED_TABLE")
    path = Path(override) if override else TUNED_DIR / f"{device_key}.json"
    if not path.exists():
        if override:
            raise ValueError(f"DAMI_TUNED_TABLE={override} does not exist")
        return {}
    return json.loads(path.read_text())["configs"]


@cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the CPU interpreter: small grids keep the tests fast


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _heuristic(
    m: int, n: int, k: int, elem_bytes: int, sms: int, on_gpu: bool, k_contiguous: bool = True
) -> KernelConfig:
    """Default configs. The GPU ones were picked (untimed) so that the sm_90 builds of exactly what
    the launcher runs keep every variant free of register spills and within shared memory
    (`scripts/compile_check.py`); timing-based tuning on a GPU overrides them through the tuned table.
    fp32 products are exact fp32 (FMA, not tensor cores), which needs smaller tiles than bf16/fp16.
    k_contiguous=False: weights strided along K (the autograd backward's W^T views), whose loads do
    not vectorize; decode then takes half the K tile (the full one spills)."""
    bucket = m_bucket(m)
    fp32 = elem_bytes == 4
    if bucket <= DECODE_MAX_M:
        # Decode: one row tile holds all rows, so each weight byte is read once; split K until the
        # grid covers the GPU about twice.
        block_m = max(16, _next_pow2(m))
        if not on_gpu:
            return KernelConfig(block_m, 32, 32, split_k=max(1, min(4, k // 64)), group_m=1, num_stages=1)
        if fp32:
            block_n, block_k = (32, 32) if block_m == 16 else (64, 16)
        else:
            block_n, block_k = 64, (64 if k_contiguous else 32)
        tiles_n = -(-n // block_n)
        split = max(1, min(-(-2 * sms // tiles_n), k // (4 * block_k)))
        # 16-bit, K-contiguous, M 17-64: one warpgroup (64x64x64, 3 stages: 139 registers, 72 KB) fits 3
        # CTAs per SM, so the ~2*SM programs of the split grid run in one wave.
        warps = 4 if block_m == 16 or (not fp32 and k_contiguous) else 8
        stages = 3 if (fp32 or block_m > 16) else 4
        return KernelConfig(block_m, block_n, block_k, split_k=split, group_m=1, num_warps=warps, num_stages=stages)
    if not on_gpu:
        return KernelConfig(32, 32, 32, group_m=4, num_stages=1)
    if fp32:
        return KernelConfig(64, 64, 16, group_m=8, num_warps=8, num_stages=3)
    if bucket <= 256 or not k_contiguous:
        if bucket <= 256:
            return KernelConfig(64, 128, 32, group_m=8, num_warps=8, num_stages=4)
        return KernelConfig(128, 64, 32, group_m=8, num_warps=8, num_stages=4)
    # M > 256, 16-bit, K-contiguous: 128x128x64, 3 stages (144 KB of shared memory, 1 CTA per SM). swap_ab
    # makes the blended weight tile the register A operand of wgmma, so the blend loop's MMAs overlap
    # (wait_group 3) like the other two loops' (1 and 2); without it the blend loop waits for every MMA.
    # 188 registers without swap_ab, 219 with; 128x256 spills.
    return KernelConfig(128, 128, 64, group_m=8, num_warps=8, num_stages=3, swap_ab=True)


@cache
def _cached_config(
    bucket: int, n: int, k: int, dtype: torch.dtype, device_key: str, sms: int, on_gpu: bool, k_contiguous: bool = True
) -> KernelConfig:
    entry = _tuned_table(device_key).get(table_key(n, k, bucket, dtype)) if k_contiguous else None
    if entry is not None:
        return KernelConfig(**entry)
    return _heuristic(bucket, n, k, torch.empty((), dtype=dtype).element_size(), sms, on_gpu, k_contiguous)


def pick_config(
    m: int, n: int, k: int, dtype: torch.dtype, device: torch.device, seg_len: int = 1, k_contiguous: bool = True
) -> KernelConfig:
    """Config for an [M, K] x [N, K]^T problem (cached per M bucket; seg_len is not part of the key).
    k_contiguous: the weights are contiguous along K (tuned tables cover only that layout)."""
    del seg_len  # segment tiling is decided by KernelConfig.follow_segments at launch
    return _cached_config(
        m_bucket(m), n, k, dtype, _device_key(device), _sm_count(device), device.type == "cuda", k_contiguous
    )


def config_to_json(cfg: KernelConfig) -> dict:
    return asdict(cfg)
