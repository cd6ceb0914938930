"""InterpEmbedding: token embeddings blended per sequence between two tables."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dami_kernels.modules.blending import blend, lam_view, token_rows
from dami_kernels.modules.lambda_state import LambdaBound, LambdaState


class InterpEmbedding(LambdaBound, nn.Embedding):
    """e = (1-λ_b)·E_I[id] + λ_b·E_T[id]; ``weight`` is E_I [V, H], ``weight_t`` is E_T.

    Input ids [B, ...]; output [B, ..., H] in the weights' dtype (blend in fp32). With λ per packed
    token row (`LambdaState.set_rows`) every id reads its own row's λ.
    """

    weight_t: nn.Parameter

    def __init__(
        self, num_embeddings, embedding_dim, padding_idx=None, *, lam_state: LambdaState, device=None, dtype=None
    ):
        super().__init__(num_embeddings, embedding_dim, padding_idx, device=device, dtype=dtype)
        self.bind_lambda(lam_state)
        self.weight_t = nn.Parameter(torch.empty_like(self.weight), requires_grad=False)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, lam_state: LambdaState, weight_t: nn.Parameter):
        """Wrap `emb`, keeping its weight Parameter object (ties survive) as the Instruct side."""
        if emb.max_norm is not None or emb.scale_grad_by_freq or emb.sparse:
            raise ValueError("nn.Embedding with max_norm, scale_grad_by_freq or sparse is not supported")
        new = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, lam_state=lam_state, device="meta")
        new.weight = emb.weight
        new.weight_t = weight_t
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        state = self.lam_state
        if state.per_row:
            lam, _, uniform = state.for_rows(token_rows(ids.shape, ids=True))
        else:
            lam, uniform = state.for_layer(ids.shape[0])
        if uniform == 0.0:
            return F.embedding(ids, self.weight, self.padding_idx)
        if uniform == 1.0:
            return F.embedding(ids, self.weight_t, self.padding_idx)
        e_i = F.embedding(ids, self.weight, self.padding_idx)
        e_t = F.embedding(ids, self.weight_t, self.padding_idx)
        if state.per_row:
            return blend(e_i, e_t, lam.reshape(tuple(ids.shape) + (1,) * (e_i.dim() - ids.dim())))
        return blend(e_i, e_t, lam_view(lam.expand(ids.shape[0]), e_i.dim()))
