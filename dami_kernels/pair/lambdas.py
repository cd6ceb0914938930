"""Set a pair model's λ: `set_lambda`, the restoring `lambda_scope`, and expansion for `generate`.

HF `generate` repeats every input row max(num_beams, num_return_sequences) times with
repeat_interleave (transformers 5.x `_expand_inputs_for_generation`); λ per sequence must be expanded
the same way, explicitly, with `expand=` (the layers never broadcast a mismatched λ).

Threads: one model has one λ, so `set_lambda`, `lambda_scope` and `dami_kernels.generate` on the same
model are serialized by one re-entrant lock per model (`lambda_lock`). A `lambda_scope` holds it from
entry to exit (the previous λ is restored before another thread's scope or set can start), and a
`generate` call holds it for the whole call, so each call runs at its own λ and leaves the λ the model had
before. Other threads block meanwhile (calls on one model never run in parallel). A plain
``model(...)`` forward does not take the lock: in another thread it sees whatever λ is set at that time.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager

import torch
from torch import nn

from dami_kernels.modules import LambdaState
from dami_kernels.validation import lambda_list, positive_int

STATE_ATTR = "dami_lambda"


def lambda_state(model: nn.Module) -> LambdaState:
    """The LambdaState registered on a model built by `load_pair` or `convert_pair`."""
    state = getattr(model, STATE_ATTR, None)
    if not isinstance(state, LambdaState):
        raise ValueError("model has no λ state; build it with dami_kernels.load_pair or convert_pair")
    return state


_LOCKS: weakref.WeakKeyDictionary[LambdaState, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def lambda_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serializes λ changes and generate calls on `model` (one per λ state).

    Kept in a weak dictionary, not on the model, so that the model still deep-copies and pickles.
    """
    state = lambda_state(model)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(state)
        if lock is None:
            lock = _LOCKS[state] = threading.RLock()
    return lock


def expand_lambda(lam, expand: int):
    """Repeat each per-sequence λ `expand` times (row order of HF generate); a scalar λ is returned as is."""
    positive_int(expand, "expand")
    if isinstance(lam, (list, tuple)):
        lam = lambda_list(lam)
    if isinstance(lam, torch.Tensor) and lam.dim() == 1 and expand > 1:
        return lam.repeat_interleave(expand)
    return lam


def set_lambda(model: nn.Module, lam, *, expand: int = 1) -> None:
    """Set λ: a float (any batch) or a tensor/list [batch] (per sequence), each value repeated `expand` times.

    Raises ValueError for NaN/inf, for values outside [0, 1] without the extrapolation opt-in, and for
    bad types or shapes. Waits while another thread holds the model's λ (a `lambda_scope` or `generate`).
    """
    with lambda_lock(model):
        lambda_state(model).set(expand_lambda(lam, expand))


@contextmanager
def lambda_scope(model: nn.Module, lam, *, expand: int = 1):
    """Context manager: set λ (as `set_lambda`) and restore the previous λ on exit.

    For `model.generate(..., num_beams=b, num_return_sequences=r)` pass expand=max(b, r), or use
    `generation_expand_size(model, generate_kwargs)`. Holds the model's `lambda_lock` until exit: scopes
    of other threads on the same model wait, so each sees its own λ.
    """
    state = lambda_state(model)
    with lambda_lock(model):
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
