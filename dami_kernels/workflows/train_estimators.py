"""Fit both λ(q) estimators on a train split: roll out the λ grid, tune DAMI-Conf, train DAMI-Pref.

Output directory layout (what `dami_kernels.estimators.store.load_estimator` reads):
    DIR/conf.json               tuned DAMI-Conf hyperparameters (+ what tuning measured)
    DIR/pref/config.json, DIR/pref/head.safetensors   the DAMI-Pref head
    DIR/rollouts.jsonl          the train rollouts (id, lam, correct, tokens)
    DIR/conf_signals.json       the train queries' confidence / discrepancy
    DIR/train_report.json       sensitivity sweep of DAMI-Conf, the Pref loss curve, train metrics
    DIR/train_ids.json          ids of the train items (evaluation excludes them)
    DIR/train_prompts.json      {id: prompt} of the train items (the syntax-rule baseline is fit on them)
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from dami_kernels.estimators import DamiConf, Rollouts, conf_signals
from dami_kernels.estimators.conf import AUTO
from dami_kernels.estimators.conf_estimator import DEFAULT_TUNE_GRID
from dami_kernels.estimators.fit import fit_pref, prompts_for
from dami_kernels.estimators.pref import CONF_SIGNALS
from dami_kernels.evaluation.data import EvalItem
from dami_kernels.evaluation.sweep import DEFAULT_GRID, sweep_records


def dev_prompts(directory, ids: list[str]) -> list[str]:
    """The prompts of an estimator directory's train (dev) items, in `ids` order: from train_prompts.json,
    else from testbed ids ("L<level>:<expression>", whose prompt is the expression)."""
    path = Path(directory) / "train_prompts.json"
    if path.is_file():
        table = json.loads(path.read_text())
        missing = [i for i in ids if i not in table]
        if missing:
            raise ValueError(f"{path} has no prompt for ids {missing[:3]}")
        return [table[i] for i in ids]
    if all(":" in i for i in ids):
        return [i.split(":", 1)[1] for i in ids]
    raise ValueError(f"{path} not found and the ids are not testbed ids; retrain the estimators")


def conf_signal_aurocs(signals, instruct_wrong) -> dict:
    """AUROC of each DAMI-Conf signal for predicting an Instruct error (instruct_wrong [Q] bool): low
    System-1 confidence, and the endpoints' discrepancy. NaN when one class is empty."""
    from dami_kernels.evaluation.stats import auroc

    return {
        "confidence": auroc(1 - signals.confidence, instruct_wrong),
        "discrepancy": auroc(signals.discrepancy, instruct_wrong),
    }


def kept_signals(drop_signals) -> list[str]:
    """The DAMI-Conf signals left after dropping ``drop_signals`` (names from CONF_SIGNALS; one at most)."""
    drop = list(drop_signals)
    unknown = sorted(set(drop) - set(CONF_SIGNALS))
    if unknown or len(set(drop)) >= len(CONF_SIGNALS):
        raise ValueError(f"drop_signals must name at most one of {CONF_SIGNALS}, got {drop}")
    return [name for name in CONF_SIGNALS if name not in drop]


def rollouts_from_records(records) -> Rollouts:
    """Rollouts [Q, G] from sweep records (one per item and grid λ)."""
    return Rollouts.from_records([asdict(r) for r in records])


def fit_estimators(
    model,
    tokenizer,
    items: list[EvalItem],
    rollouts: Rollouts,
    *,
    pref_search: dict | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    drop_signals=(),
    think_prefix: str = AUTO,
) -> dict:
    """Tune DAMI-Conf and train DAMI-Pref on rollouts of `items` (ids must match).

    drop_signals: DAMI-Conf signals to leave out of both estimators (a subset of CONF_SIGNALS, not both):
    DAMI-Conf is tuned with w fixed (0 without the discrepancy, 1 without the confidence) and DAMI-Pref's
    features omit them. think_prefix: what the λ=1 rows get appended to reach the Thinking model's
    non-thinking mode ("auto": an empty think block where the tokenizer knows the tags; "" for the testbed).
    DAMI-Pref: features = mean-pooled endpoint hidden states + DAMI-Conf's (kept) signals; head settings
    (steps, accuracy weight of correct-vs-wrong pairs, hidden size) chosen by 5-fold cross-validation
    on these rollouts (`estimators.fit.cross_validate_pref`, grid `pref_search`, default PREF_SEARCH).
    Returns {"conf", "pref", "signals", "sensitivity", "pref_losses", "pref_cv"}.
    """
    prompts = prompts_for(rollouts, {it.id: it.prompt for it in items})
    signals = conf_signals(
        model, tokenizer, prompts, think_prefix=think_prefix, ids=rollouts.ids, batch_size=batch_size, progress=progress
    )
    kept = kept_signals(drop_signals)
    grid = dict(
        DEFAULT_TUNE_GRID,
        w=[0.0] if "discrepancy" not in kept else [1.0] if "confidence" not in kept else DEFAULT_TUNE_GRID["w"],
    )
    conf = DamiConf(think_prefix=think_prefix).tune(signals, rollouts, grid=grid)
    head, losses, cv = fit_pref(
        model,
        tokenizer,
        prompts,
        rollouts,
        search=pref_search,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        signals=signals,
        conf_signals=True if len(kept) == len(CONF_SIGNALS) else kept,
        think_prefix=think_prefix,
    )
    return {
        "conf": conf,
        "pref": head,
        "signals": signals,
        "sensitivity": conf.sensitivity(signals, rollouts),
        "pref_losses": losses,
        "pref_cv": cv,
    }


def train_estimators(
    model,
    tokenizer,
    items: list[EvalItem],
    out_dir,
    *,
    grid=DEFAULT_GRID,
    batch_size: int = 256,
    max_new_tokens: int = 64,
    progress: bool = True,
    **fit_kwargs,
) -> dict:
    """Roll out `items` on the λ grid, fit both estimators (`fit_kwargs` go to `fit_estimators`) and
    write them to out_dir (layout above)."""
    out_dir = Path(out_dir)
    records, seconds = sweep_records(
        model, tokenizer, items, grid, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress
    )
    rollouts = rollouts_from_records(records)
    fit = fit_estimators(model, tokenizer, items, rollouts, progress=progress, **fit_kwargs)
    out_dir.mkdir(parents=True, exist_ok=True)
    fit["conf"].save(out_dir / "conf.json")
    fit["pref"].save(out_dir / "pref")
    rollouts.to_jsonl(out_dir / "rollouts.jsonl")
    (out_dir / "conf_signals.json").write_text(json.dumps(fit["signals"].to_dict()))
    (out_dir / "train_ids.json").write_text(json.dumps([it.id for it in items]))
    (out_dir / "train_prompts.json").write_text(json.dumps({it.id: it.prompt for it in items}))
    prompts = prompts_for(rollouts, {it.id: it.prompt for it in items})
    pref_lam = fit["pref"].predict_prompts(model, tokenizer, prompts, progress=False, signals=fit["signals"])
    err = ~rollouts.correct[:, rollouts.grid.index(0.0)] if 0.0 in rollouts.grid else None
    report = {
        "n_train": len(items),
        "grid": rollouts.grid,
        "rollout_seconds": seconds,
        "dropped_signals": sorted(fit_kwargs.get("drop_signals", ())),
        "signals_auroc_dev": None if err is None else conf_signal_aurocs(fit["signals"], err),
        "fixed": rollouts.frontier(),
        "oracle": rollouts.evaluate(rollouts.oracle_lam()),
        "conf": {
            "hyperparameters": {k: getattr(fit["conf"], k) for k in ("w", "tau", "temperature")},
            "train": fit["conf"].tuned,
            "sensitivity": fit["sensitivity"],
        },
        "pref": {
            "train": rollouts.evaluate(pref_lam),
            "loss_first": fit["pref_losses"][0],
            "loss_last": fit["pref_losses"][-1],
            "steps": len(fit["pref_losses"]),
            "training": fit["pref"].training_record,
            "cross_validation": fit["pref_cv"],
        },
    }
    (out_dir / "train_report.json").write_text(json.dumps(report, indent=1))
    return report
