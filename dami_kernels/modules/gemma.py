"""Gemma-family layers: the RMSNorm that scales by (1 + w) and the embedding scaled by sqrt(hidden).

Both are linear in their weights, so blending the weights is blending the model: (1 + g(λ)) with
g(λ) = (1-λ)·g_I + λ·g_T, and scale·E(λ)[id].
"""

from __future__ import annotations

import torch
from torch import nn

from dami_kernels.modules.embedding import InterpEmbedding
from dami_kernels.modules.lambda_state import LambdaState
from dami_kernels.modules.norms import InterpRMSNorm

# RMSNorm classes whose forward is exactly: (x.float() * rsqrt(mean(x²) + eps) * (1 + weight.float())).type_as(x),
# with the epsilon in `eps`.
OFFSET_RMSNORM_CLASS_NAMES = frozenset({"GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm"})
# nn.Embedding subclasses whose forward is exactly: F.embedding(ids, weight) * embed_scale.to(weight.dtype).
SCALED_EMBEDDING_CLASS_NAMES = frozenset({"Gemma3TextScaledWordEmbedding"})


def is_offset_rmsnorm(module: nn.Module) -> bool:
    return type(module).__name__ in OFFSET_RMSNORM_CLASS_NAMES and hasattr(module, "eps")


def is_scaled_embedding(module: nn.Module) -> bool:
    return type(module).__name__ in SCALED_EMBEDDING_CLASS_NAMES and hasattr(module, "embed_scale")


class InterpOffsetRMSNorm(InterpRMSNorm):
    """Gemma RMSNorm: normalize in fp32, scale by (1 + g(λ)) in fp32, cast back. Input [B, ..., D]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.normalized(x) * (1.0 + self.gain(x.shape[0], x.dim(), shape=x.shape).float())).type_as(x)


class InterpScaledEmbedding(InterpEmbedding):
    """Gemma 3 text embedding: the blended lookup times the fixed ``embed_scale`` (sqrt(hidden)). Ids [B, ...]."""

    embed_scale: torch.Tensor  # a non-persistent buffer, registered by from_embedding

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, lam_state: LambdaState, weight_t: nn.Parameter):
        new = super().from_embedding(emb, lam_state, weight_t)
        new.register_buffer("embed_scale", emb.embed_scale, persistent=False)
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * self.embed_scale.to(self.weight.dtype)
