"""Shared batching for the estimators: the 2B-row endpoint batch (rows [0, B) at λ=0, [B, 2B) at λ=1).

Prompts are encoded as `dami_kernels.generation.generate` encodes them (`dami_kernels.hf.prompts`),
left-padded, and given position ids that skip the padding, so a padded row computes what the same row
would compute alone.
"""

from __future__ import annotations

import torch

from dami_kernels.validation import positive_int


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise ValueError("prompts must be a list of strings")
    if not prompts:
        raise ValueError("prompts must not be empty")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}] must be a string, got {type(p).__name__}")
    return list(prompts)


def endpoint_lambdas(batch: int, device=None) -> torch.Tensor:
    """λ per row of the endpoint batch: [2B] float32, zeros for rows [0, B), ones for rows [B, 2B)."""
    return torch.cat([torch.zeros(batch), torch.ones(batch)]).to(device=device, dtype=torch.float32)


def chunks(items: list, size: int) -> list[list]:
    positive_int(size, "batch_size")
    return [items[i : i + size] for i in range(0, len(items), size)]
