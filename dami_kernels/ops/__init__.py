"""Fused interpolated ops, one package per op family (`interp_linear/`, `interp_experts/`: kernel, launcher, torch
path, fp64 reference) and what they share (`common/`: backend choice, checks, tile configs, tile helpers)."""

from dami_kernels.ops.common.backend import interpreting, resolve_backend, triton_available
from dami_kernels.ops.common.checks import check_lambda_value
from dami_kernels.ops.interp_experts import interp_experts, interp_experts_fp64
from dami_kernels.ops.interp_linear import interp_linear, interp_linear_fp64

__all__ = [
    "interp_linear",
    "interp_linear_fp64",
    "interp_experts",
    "interp_experts_fp64",
    "check_lambda_value",
    "resolve_backend",
    "triton_available",
    "interpreting",
]
