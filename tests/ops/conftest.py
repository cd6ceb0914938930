"""Fixtures of the op tier."""

import math

import pytest
import torch

from dami_kernels.ops import triton_available


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every kernel output buffer starts as NaN, so an unwritten tile fails."""
    if not triton_available():
        return
    from dami_kernels.ops.common import launch as common_launch

    monkeypatch.setattr(
        common_launch,
        "alloc_output",
        lambda shape, dtype, device: torch.full(shape, math.nan, dtype=dtype, device=device),
    )
