"""λ(q) estimators: pick a reasoning intensity per query for the interpolated Instruct/Thinking model.

- "fixed": the same λ for every query;
- "conf": DAMI-Conf, zero-shot, from System 1's confidence and the endpoints' discrepancy (signals:
  `conf.py`; the estimator: `conf_estimator.py`);
- "pref": DAMI-Pref, a small head trained with a Bradley–Terry loss on λ-grid rollouts (`pref.py`);
- the oracle (the cheapest correct grid λ per query) is a reference read from rollouts (`rollouts.py`).
"""

from __future__ import annotations

import math

import torch

from dami_kernels.estimators.batching import check_prompts
from dami_kernels.estimators.conf import ConfSignals, ConfTrace, conf_signals, conf_trace
from dami_kernels.estimators.conf_estimator import DamiConf, conf_lambda
from dami_kernels.estimators.fit import fit_conf, fit_pref, prompts_for
from dami_kernels.estimators.pref import (
    PrefHead,
    bradley_terry_loss,
    pair_weights,
    preference_pairs,
    query_features,
    train_pref_head,
)
from dami_kernels.estimators.rollouts import Rollouts, snap_to_grid
from dami_kernels.estimators.signals import confidence, js_divergence, masked_mean
from dami_kernels.validation import is_number

METHODS = ("conf", "pref", "fixed")


def estimate(
    model,
    tokenizer,
    prompts,
    method: str = "conf",
    *,
    estimator=None,
    lam=None,
    batch_size: int = 32,
    progress: bool = True,
    chat_template: bool | None = None,
) -> torch.Tensor:
    """λ(q) for each prompt: [B] float32 on CPU.

    method "conf" needs estimator=DamiConf, "pref" needs estimator=PrefHead (trained or loaded), "fixed"
    needs lam= (a finite float). Prompts are encoded as `dami_kernels.generation.generate` encodes them:
    chat_template None applies the tokenizer's chat template when it has one, False feeds the text as is.
    """
    prompts = check_prompts(prompts)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "fixed":
        if estimator is not None:
            raise ValueError("method 'fixed' takes lam=, not estimator=")
        if not is_number(lam) or not math.isfinite(lam):
            raise ValueError(f"method 'fixed' needs lam= a finite number, got {lam!r}")
        return torch.full((len(prompts),), float(lam), dtype=torch.float32)
    if lam is not None:
        raise ValueError(f"method {method!r} takes estimator=, not lam=")
    expected = DamiConf if method == "conf" else PrefHead
    if not isinstance(estimator, expected):
        got = "nothing" if estimator is None else type(estimator).__name__
        raise ValueError(f"method {method!r} needs estimator= a {expected.__name__}, got {got}")
    if method == "conf":
        return estimator.predict(
            model, tokenizer, prompts, batch_size=batch_size, progress=progress, chat_template=chat_template
        )
    return estimator.predict_prompts(
        model, tokenizer, prompts, batch_size=batch_size, progress=progress, chat_template=chat_template
    )


__all__ = [
    "estimate",
    "METHODS",
    "DamiConf",
    "ConfSignals",
    "ConfTrace",
    "conf_signals",
    "conf_trace",
    "conf_lambda",
    "fit_conf",
    "fit_pref",
    "prompts_for",
    "PrefHead",
    "preference_pairs",
    "pair_weights",
    "query_features",
    "train_pref_head",
    "bradley_terry_loss",
    "Rollouts",
    "snap_to_grid",
    "confidence",
    "js_divergence",
    "masked_mean",
]
