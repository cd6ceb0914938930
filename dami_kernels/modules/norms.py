"""Interpolated norms: RMSNorm (Llama/Qwen2/Qwen3 style, incl. Qwen3 q_norm/k_norm) and LayerNorm.

The gain (and LayerNorm bias) is blended per sequence: g_b = (1-λ_b)·g_I + λ_b·g_T. Inputs are
[B, ..., D] with the batch first (q_norm/k_norm see [B, T, H, D]); outputs have the input's shape.
With λ per packed token row (`LambdaState.set_rows`) the gain is blended per token of [B, T].
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dami_kernels.modules.blending import blend, lam_rows_view, lam_view, token_rows
from dami_kernels.modules.lambda_state import LambdaBound, LambdaState

# RMSNorm classes whose forward is exactly: weight * (x.float() * rsqrt(mean(x²) + eps)).to(x.dtype),
# with the epsilon in `variance_epsilon`. Other RMSNorm flavours (e.g. Gemma's 1 + weight) are not
# swapped; their tensors then count as uncovered, which is an error when they differ.
RMSNORM_CLASS_NAMES = frozenset(
    {
        "LlamaRMSNorm",
        "Qwen2RMSNorm",
        "Qwen3RMSNorm",
        "MistralRMSNorm",
        "MixtralRMSNorm",
        "Qwen2MoeRMSNorm",
        "Qwen3MoeRMSNorm",
        "Phi3RMSNorm",
    }
)


def is_supported_rmsnorm(module: nn.Module) -> bool:
    return type(module).__name__ in RMSNORM_CLASS_NAMES and hasattr(module, "variance_epsilon")


class _BlendedGain(LambdaBound):
    """The per-sequence blended parameter of a norm, shaped to broadcast over an input [B, ..., D]."""

    def gain(self, batch: int, ndim: int, name: str = "weight", shape: torch.Size | None = None) -> torch.Tensor:
        """(1-λ_b)·p_I + λ_b·p_T as [B, 1, ..., D] (or [D] when every sequence shares λ). shape: the
        input's shape, needed when λ is set per packed token row (then [B, T, 1, ..., D])."""
        p_i, p_t = getattr(self, name), getattr(self, name + "_t")
        state = self.lam_state
        if state.per_row:
            if shape is None:
                raise ValueError(f"{type(self).__name__}: λ is set per packed token row; gain() needs shape=x.shape")
            lam, _, uniform = state.for_rows(token_rows(shape))
            if uniform is None:
                return blend(p_i, p_t, lam_rows_view(lam, shape, ndim))
        else:
            lam, uniform = state.for_layer(batch)
            if uniform is None:
                return blend(p_i, p_t, lam_view(lam.expand(batch), ndim))
        if uniform == 0.0:
            return p_i
        if uniform == 1.0:
            return p_t
        return blend(p_i, p_t, uniform)


class InterpRMSNorm(_BlendedGain, nn.Module):
    """RMSNorm with a per-sequence blended gain; ``weight`` = Instruct side, ``weight_t`` = Thinking side."""

    weight: nn.Parameter
    weight_t: nn.Parameter
    variance_epsilon: float

    def __init__(self, weight: nn.Parameter, weight_t: nn.Parameter, eps: float, *, lam_state: LambdaState):
        super().__init__()
        self.bind_lambda(lam_state)
        self.weight = weight
        self.weight_t = weight_t
        self.variance_epsilon = eps

    @classmethod
    def from_rmsnorm(cls, norm: nn.Module, lam_state: LambdaState, weight_t: nn.Parameter):
        """Wrap `norm` (epsilon in `variance_epsilon`, or `eps` as Gemma's norms keep it)."""
        src: Any = norm  # a transformers RMSNorm: its attributes are not typed here
        eps = src.variance_epsilon if hasattr(src, "variance_epsilon") else src.eps
        return cls(src.weight, weight_t, eps, lam_state=lam_state)

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """x·rsqrt(mean(x²) + eps) in fp32, [B, ..., D]."""
        h = x.float()
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain(x.shape[0], x.dim(), shape=x.shape) * self.normalized(x).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class InterpLayerNorm(_BlendedGain, nn.Module):
    """LayerNorm (elementwise affine) with per-sequence blended weight and bias."""

    normalized_shape: tuple[int, ...]
    eps: float
    weight: nn.Parameter
    bias: nn.Parameter | None
    weight_t: nn.Parameter
    bias_t: nn.Parameter | None

    def __init__(
        self, norm: nn.LayerNorm, weight_t: nn.Parameter, bias_t: nn.Parameter | None, *, lam_state: LambdaState
    ):
        super().__init__()
        if not norm.elementwise_affine:
            raise ValueError("InterpLayerNorm needs an affine LayerNorm (a non-affine one needs no blend)")
        self.bind_lambda(lam_state)
        self.normalized_shape = norm.normalized_shape
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias
        self.weight_t = weight_t
        self.bias_t = bias_t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        y = self.gain(x.shape[0], x.dim(), shape=x.shape) * h
        if self.bias is not None:
            y = y + self.gain(x.shape[0], x.dim(), "bias", shape=x.shape)
        return y

    def extra_repr(self) -> str:
        return f"{tuple(self.normalized_shape)}, eps={self.eps}"
