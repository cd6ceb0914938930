"""dami_kernels: run a language model anywhere on the line between an Instruct and a Thinking checkpoint.

θ(λ) = (1-λ)·θ_I + λ·θ_T, with a different λ per sequence in one batch, through fused Triton kernels.
"""
from dami_kernels.ops import interp_linear

__version__ = "0.1.0"

__all__ = ["interp_linear", "__version__"]
