"""λ shaped for a layer's input, and the fp32 blend (1-λ)·a + λ·b that the layers compute with it."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeGuard

import torch

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


def token_rows(shape: torch.Size, ids: bool = False) -> int:
    """Token rows of a layer input: B·T of features [B, T, ...] (≥ 3 dims) or M of flat rows [M, K];
    ids: every dim of the token ids counts ([B, T] -> B·T)."""
    if ids:
        return shape.numel()
    return shape[0] * shape[1] if len(shape) >= 3 else shape[0]


def lam_rows_view(lam: torch.Tensor, shape: torch.Size, ndim: int) -> torch.Tensor:
    """λ per token row (`for_rows(token_rows(shape))`) as [B, T, 1, ..., 1] for an input [B, T, ...] (or
    [M, 1] for flat rows [M, D]), with `ndim` dims, for broadcasting."""
    lead = tuple(shape[:2]) if len(shape) >= 3 else tuple(shape[:1])
    return lam.reshape(lead + (1,) * (ndim - len(lead)))


def lam_view(lam_seq: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape λ per sequence [B] to [B, 1, ..., 1] with `ndim` dims, for broadcasting over [B, ...]."""
    return lam_seq.reshape((lam_seq.shape[0],) + (1,) * (ndim - 1))


def blend(a: torch.Tensor, b: torch.Tensor, lam) -> torch.Tensor:
    """(1-λ)·a + λ·b in fp32, returned in a's dtype; λ broadcasts against a and b.

    Under tensor parallelism a and b may be DTensors (e.g. a vocab-sharded embedding lookup); a plain λ
    tensor is then wrapped as a replicated DTensor on their mesh, as distributed ops require."""
    if isinstance(lam, torch.Tensor) and _is_dtensor(a) and not _is_dtensor(lam):
        from torch.distributed.tensor import DTensor, Replicate

        lam = DTensor.from_local(lam, a.device_mesh, [Replicate()] * a.device_mesh.ndim, run_check=False)
    return ((1.0 - lam) * a.float() + lam * b.float()).to(a.dtype)


def _is_dtensor(t) -> TypeGuard[DTensor]:
    return type(t).__name__ == "DTensor"  # no torch.distributed import on the common path
