"""Fit both estimators from prompts and their λ-grid rollouts, in one call each (for the CLI and demo).

`prompts` is either a list aligned with `rollouts.ids` or a dict id -> prompt; the rollouts decide which
queries are used and in which order.
"""

from __future__ import annotations

import itertools

import torch

from dami_kernels.estimators.conf import AUTO, conf_signals
from dami_kernels.estimators.conf_estimator import DamiConf
from dami_kernels.estimators.pref import (
    FEATURE_KIND,
    PrefHead,
    pair_weights,
    preference_pairs,
    query_features,
    signal_names,
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
        raise ValueError(
            f"prompts must be a dict id -> prompt or a list of {len(rollouts.ids)} prompts in rollouts.ids order"
        )
    return list(prompts)


def fit_conf(
    model,
    tokenizer,
    prompts,
    rollouts: Rollouts,
    conf: DamiConf | None = None,
    batch_size: int = 32,
    progress: bool = True,
    chat_template: bool | None = None,
    **tune_kwargs,
) -> DamiConf:
    """Measure DAMI-Conf signals on the train prompts and tune `conf` (default DamiConf()) on their
    rollouts; tune_kwargs go to `DamiConf.tune` (grid, objective, epsilon, alpha)."""
    conf = DamiConf() if conf is None else conf
    if not isinstance(conf, DamiConf):
        raise ValueError(f"conf must be a DamiConf, got {type(conf).__name__}")
    signals = conf_signals(
        model,
        tokenizer,
        prompts_for(rollouts, prompts),
        conf.max_answer_tokens,
        conf.think_prefix,
        ids=rollouts.ids,
        batch_size=batch_size,
        progress=progress,
        chat_template=chat_template,
    )
    return conf.tune(signals, rollouts, **tune_kwargs)


# Head settings DAMI-Pref chooses among by k-fold cross-validation on the train rollouts.
PREF_SEARCH = {"steps": [50, 100, 200], "accuracy_weight": [9.0, 30.0, 100.0], "hidden": [16]}


def _settings(search: dict) -> list[dict]:
    keys = sorted(search)
    for k in keys:
        if k not in ("steps", "accuracy_weight", "hidden") or not search[k]:
            raise ValueError(f"search keys are steps, accuracy_weight and hidden, each a non-empty list; got {search}")
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(search[k] for k in keys))]


def cross_validate_pref(
    features: torch.Tensor,
    rollouts: Rollouts,
    search: dict | None = None,
    folds: int = 5,
    epsilon: float = 0.01,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> tuple[dict, list[dict]]:
    """Pick the head settings by k-fold cross-validation on the train queries.

    features [Q, F] in `rollouts.ids` order. For each setting of `search` (default PREF_SEARCH) a head is
    trained on k−1 folds and its λ choices on the held-out fold are scored on the rollouts (nearest grid
    point). Rule (as DAMI-Conf's "constrained" objective): among settings whose mean CV accuracy is ≥ the
    best setting's − ε, the one with the fewest mean CV tokens (ties -> higher accuracy, then order).
    Returns (chosen setting, table of {setting..., cv_accuracy, cv_mean_tokens}).
    """
    q = len(rollouts.ids)
    if not isinstance(folds, int) or not 2 <= folds <= q:
        raise ValueError(f"folds must be an integer in 2..{q}, got {folds!r}")
    order = torch.randperm(q, generator=torch.Generator().manual_seed(seed)).tolist()
    splits = [sorted(order[f::folds]) for f in range(folds)]
    table = []
    for setting in _settings(search or PREF_SEARCH):
        acc = tok = 0.0
        for held in splits:
            held_set = set(held)
            train = [i for i in range(q) if i not in held_set]
            r_train = rollouts.select([rollouts.ids[i] for i in train])
            r_held = rollouts.select([rollouts.ids[i] for i in held])
            pairs = preference_pairs(r_train)
            head, _ = train_pref_head(
                features[train],
                pairs,
                rollouts.grid,
                steps=setting["steps"],
                lr=lr,
                seed=seed,
                hidden=setting["hidden"],
                weight_decay=weight_decay,
                weights=pair_weights(r_train, pairs, setting["accuracy_weight"]),
                progress=False,
            )
            res = r_held.evaluate(head.predict(features[held]))
            acc += res["accuracy"] * len(held) / q
            tok += res["mean_tokens"] * len(held) / q
        table.append({**setting, "cv_accuracy": acc, "cv_mean_tokens": tok})
    best = max(r["cv_accuracy"] for r in table)
    feasible = [i for i, r in enumerate(table) if r["cv_accuracy"] >= best - epsilon - 1e-12]
    pick = min(feasible, key=lambda i: (table[i]["cv_mean_tokens"], -table[i]["cv_accuracy"], i))
    chosen = {k: table[pick][k] for k in ("steps", "accuracy_weight", "hidden")}
    return chosen, table


def fit_pref(
    model,
    tokenizer,
    prompts,
    rollouts: Rollouts,
    pooling: str = "mean",
    conf_signals=True,
    search: dict | None = None,
    folds: int = 5,
    epsilon: float = 0.01,
    lr: float = 3e-3,
    seed: int = 0,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    progress: bool = True,
    chat_template: bool | None = None,
    signals=None,
    think_prefix: str = AUTO,
) -> tuple[PrefHead, list[float], list[dict]]:
    """Features of the train prompts (`query_features`: pooled endpoint hidden states, plus the DAMI-Conf
    signals that conf_signals names: True both, or a list such as ["confidence"]), head settings chosen by
    `cross_validate_pref` over `search`, then the head trained on all train queries with them. A search
    with one value per key skips the choice.
    signals: the train prompts' DAMI-Conf signals if already measured (rollouts.ids order); think_prefix:
    what DAMI-Conf appends to the λ=1 rows (`conf.resolve_think_prefix`), recorded in the feature spec.
    Returns (head, loss per step, CV table)."""
    feats = query_features(
        model,
        tokenizer,
        prompts_for(rollouts, prompts),
        pooling=pooling,
        batch_size=batch_size,
        progress=progress,
        chat_template=chat_template,
        conf_signals=conf_signals,
        signals=signals,
        think_prefix=think_prefix,
    )
    search = search or PREF_SEARCH
    if len(_settings(search)) == 1:
        chosen, table = _settings(search)[0], []
    else:
        chosen, table = cross_validate_pref(feats, rollouts, search, folds, epsilon, lr, weight_decay, seed)
    pairs = preference_pairs(rollouts)
    head, losses = train_pref_head(
        feats,
        pairs,
        rollouts.grid,
        steps=chosen["steps"],
        lr=lr,
        seed=seed,
        hidden=chosen["hidden"],
        weight_decay=weight_decay,
        feature_spec={
            "kind": FEATURE_KIND,
            "pooling": pooling,
            "conf_signals": conf_signals if isinstance(conf_signals, bool) else signal_names(conf_signals),
            "think_prefix": think_prefix,
        },
        weights=pair_weights(rollouts, pairs, chosen["accuracy_weight"]),
        progress=progress,
    )
    head.training_record.update(
        accuracy_weight=float(chosen["accuracy_weight"]), cv_folds=folds, cv_epsilon=epsilon, cv_choices=len(table)
    )
    return head, losses, table
