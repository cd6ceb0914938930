"""The interpolated experts MLP (MoE): every token-expert pair at its row's λ. Public function (`op`), grouped
Triton kernel, launcher, torch path and fp64 reference."""

from dami_kernels.ops.interp_experts.op import interp_experts, interp_experts_rows
from dami_kernels.ops.interp_experts.reference import interp_experts_fp64

__all__ = ["interp_experts", "interp_experts_rows", "interp_experts_fp64"]
