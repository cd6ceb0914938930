"""Fit both estimators from prompts and their λ-grid rollouts, in one call each (for the CLI and demo).

`prompts` is either a list aligned with `rollouts.ids` or a dict id -> prompt; the rollouts decide which
queries are used and in which order.
"""
from __future__ import annotations

from dami_kernels.estimators.conf import DamiConf, conf_signals
from dami_kernels.estimators.pref import (
    FEATURE_KIND,
    PrefHead,
    pair_weights,
    preference_pairs,
    query_features,
    train_pref_head,
)
from dami_kernels.estimators.rollouts import Rollouts


def prompts_for(rollouts: Rollouts, prompts) -> list[str]:
    """The prompt of each rollout query, in `rollouts.ids` order."""
    if not isinstance(rollouts, Rollouts):
        raise ValueError(f"rollouts must be Rollouts, got {type(rollouts).__name__}")
    if isinstance(prompts, dict):
        missing = [q for q in rollouts.ids if q not in prompts]
        if missing:
            raise ValueError(f"prompts has no entry for ids {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        return [prompts[q] for q in rollouts.ids]
    if not isinstance(prompts, (list, tuple)) or len(prompts) != len(rollouts.ids):
        raise ValueError(f"prompts must be a dict id -> prompt or a list of {len(rollouts.ids)} prompts "
                         "in rollouts.ids order")
    return list(prompts)


def fit_conf(model, tokenizer, prompts, rollouts: Rollouts, conf: DamiConf | None = None,
             batch_size: int = 32, progress: bool = True, chat_template: bool | None = None,
             **tune_kwargs) -> DamiConf:
    """Measure DAMI-Conf signals on the train prompts and tune `conf` (default DamiConf()) on their
    rollouts; tune_kwargs go to `DamiConf.tune` (grid, objective, epsilon, alpha)."""
    conf = DamiConf() if conf is None else conf
    if not isinstance(conf, DamiConf):
        raise ValueError(f"conf must be a DamiConf, got {type(conf).__name__}")
    signals = conf_signals(model, tokenizer, prompts_for(rollouts, prompts), conf.max_answer_tokens,
                           conf.think_prefix, ids=rollouts.ids, batch_size=batch_size, progress=progress,
                           chat_template=chat_template)
    return conf.tune(signals, rollouts, **tune_kwargs)


def fit_pref(model, tokenizer, prompts, rollouts: Rollouts, pooling: str = "mean",
             accuracy_weight: float = 1.0, steps: int = 300, lr: float = 3e-3, seed: int = 0,
             hidden: int = 64, weight_decay: float = 1e-4, batch_size: int = 32, progress: bool = True,
             chat_template: bool | None = None) -> tuple[PrefHead, list[float]]:
    """Features of the train prompts, preference pairs of their rollouts (weighted by accuracy_weight),
    and a trained PrefHead on the rollouts' grid. Returns (head, loss per step)."""
    feats = query_features(model, tokenizer, prompts_for(rollouts, prompts), pooling=pooling,
                           batch_size=batch_size, progress=progress, chat_template=chat_template)
    pairs = preference_pairs(rollouts)
    head, losses = train_pref_head(feats, pairs, rollouts.grid, steps=steps, lr=lr, seed=seed, hidden=hidden,
                                   weight_decay=weight_decay,
                                   feature_spec={"kind": FEATURE_KIND, "pooling": pooling},
                                   weights=pair_weights(rollouts, pairs, accuracy_weight), progress=progress)
    head.training_record["accuracy_weight"] = float(accuracy_weight)
    return head, losses
