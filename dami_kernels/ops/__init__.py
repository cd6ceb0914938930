"""Fused interpolated ops: Triton kernels, their launchers, the torch reference and backend choice."""
from dami_kernels.ops.backend import interpreting, resolve_backend, triton_available
from dami_kernels.ops.checks import check_lambda_value
from dami_kernels.ops.interp_linear import interp_linear
from dami_kernels.ops.moe import interp_experts
from dami_kernels.ops.moe_reference import interp_experts_fp64
from dami_kernels.ops.reference import interp_linear_fp64

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
