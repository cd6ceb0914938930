"""Set a pair model's λ: `set_lambda`, the restoring `lambda_scope`, and expansion for `generate`.

HF `generate` repeats every input row max(num_beams, num_return_sequences) times with
repeat_interleave (transformers 5.x `_expand_inputs_for_generation`); λ per sequence must be expanded
the same way, explicitly, with `expand=` (the layers never broadcast a mismatched λ).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from dami_kernels.modules import LambdaState

STATE_ATTR = "dami_lambda"


def lambda_state(model: nn.Module) -> LambdaState:
    """The LambdaState registered on a model built by `load_pair` or `convert_pair`."""
    state = getattr(model, STATE_ATTR, None)
    if not isinstance(state, LambdaState):
        raise ValueError("model has no λ state; build it with dami_kernels.load_pair or convert_pair")
    return state


def expand_lambda(lam, expand: int):
    """Repeat each per-sequence λ `expand` times (row order of HF generate); a scalar λ is returned as is."""
    if isinstance(expand, bool) or not isinstance(expand, int) or expand < 1:
        raise ValueError(f"expand must be a positive integer, got {expand!r}")
    if isinstance(lam, (list, tuple)):
        lam = torch.tensor([float(v) for v in lam], dtype=torch.float32)
    if isinstance(lam, torch.Tensor) and lam.dim() == 1 and expand > 1:
        return lam.repeat_interleave(expand)
    return lam


def set_lambda(model: nn.Module, lam, *, expand: int = 1) -> None:
    """Set λ: a float (any batch) or a tensor/list [batch] (per sequence), each value repeated `expand` times.

    Raises ValueError for NaN/inf, for values outside [0, 1] without the extrapolation opt-in, and for
    bad types or shapes.
    """
    lambda_state(model).set(expand_lambda(lam, expand))


@contextmanager
def lambda_scope(model: nn.Module, lam, *, expand: int = 1):
    """Context manager: set λ (as `set_lambda`) and restore the previous λ on exit.

    For `model.generate(..., num_beams=b, num_return_sequences=r)` pass expand=max(b, r), or use
    `generation_expand_size(model, generate_kwargs)`.
    """
    state = lambda_state(model)
    previous = state.get()
    state.set(expand_lambda(lam, expand))
    try:
        yield state
    finally:
        state.set(previous)


def generation_expand_size(model: nn.Module, generate_kwargs: dict) -> int:
    """Rows per input sequence that HF generate will run: max(num_beams, num_return_sequences)."""
    config = generate_kwargs.get("generation_config") or getattr(model, "generation_config", None)

    def pick(key):
        if generate_kwargs.get(key) is not None:
            return int(generate_kwargs[key])
        return int(getattr(config, key, None) or 1)

    return max(pick("num_beams"), pick("num_return_sequences"))
