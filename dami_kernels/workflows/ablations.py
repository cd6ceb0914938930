"""Ablations of the λ(q) estimators, fitted on the dev split, scored on a study's test
sweep (the rollouts of `dami demo`'s sweep_items.jsonl, nearest grid λ):

- DAMI-Conf with both signals (the shipped tuning rule), confidence only (w = 0), discrepancy only (w = 1);
- DAMI-Pref as shipped (hidden states + Conf's c, d) and without the Conf features (hidden states only).
Each against Thinking: difference, paired bootstrap 95% CI, exact McNemar p.

    python -m dami_kernels.workflows.ablations STUDY_DIR [ESTIMATOR_DIR]   # writes STUDY_DIR/ablations.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from dami_kernels.estimators.conf import ConfSignals, conf_signals
from dami_kernels.estimators.conf_estimator import DEFAULT_TUNE_GRID, DamiConf
from dami_kernels.estimators.fit import fit_pref
from dami_kernels.estimators.rollouts import Rollouts
from dami_kernels.estimators.store import SHIPPED_DIR, load_estimator
from dami_kernels.evaluation.runner import read_records
from dami_kernels.evaluation.stats import compare
from dami_kernels.evaluation.tables import markdown_table
from dami_kernels.workflows.baselines import outcomes_at
from dami_kernels.workflows.train_estimators import dev_prompts


def _score(test: Rollouts, lam, thinking) -> dict:
    idx = test.snap(torch.as_tensor(lam, dtype=torch.float64))
    c, t = outcomes_at(test, idx)
    return {
        "accuracy": float(c.mean()),
        "mean_tokens": float(t.mean()),
        "mean_lambda": float(test.grid_tensor[idx].mean()),
        "vs_thinking": compare(c, thinking),
    }


def run_ablations(model, tok, study_dir, estimator_dir=SHIPPED_DIR, batch_size: int = 512, seed: int = 0) -> dict:
    """The variants above; returns {name: {accuracy, mean_tokens, mean_lambda, vs_thinking, [w, tau, T]}}."""
    study_dir, estimator_dir = Path(study_dir), Path(estimator_dir)
    records = read_records(study_dir / "sweep_items.jsonl")
    test = Rollouts.from_records(
        [{"id": r.id, "lam": r.lam, "correct": r.correct, "tokens": r.tokens} for r in records]
    )
    prompt_of = {r.id: r.prompt for r in records}
    prompts = [prompt_of[i] for i in test.ids]
    thinking = test.correct[:, test.grid.index(1.0)].to(torch.float64)
    dev = Rollouts.from_jsonl(estimator_dir / "rollouts.jsonl")
    dev_sig = ConfSignals.from_dict(json.loads((estimator_dir / "conf_signals.json").read_text()))
    shipped = load_estimator("conf", estimator_dir)
    test_sig = conf_signals(
        model, tok, prompts, shipped.max_answer_tokens, shipped.think_prefix, batch_size=batch_size, progress=False
    )
    eps = shipped.tuned.get("epsilon", 0.02) if shipped.tuned else 0.02
    out = {}
    for name, w in (("conf_both", None), ("conf_confidence_only", [0.0]), ("conf_discrepancy_only", [1.0])):
        grid = dict(DEFAULT_TUNE_GRID) if w is None else {**DEFAULT_TUNE_GRID, "w": w}
        est = DamiConf(max_answer_tokens=shipped.max_answer_tokens, think_prefix=shipped.think_prefix).tune(
            dev_sig, dev, grid=grid, epsilon=eps
        )
        out[name] = {
            **_score(test, est.lam_from_signals(test_sig), thinking),
            "w": est.w,
            "tau": est.tau,
            "temperature": est.temperature,
        }
    pref = load_estimator("pref", estimator_dir)
    out["pref_shipped"] = _score(
        test,
        pref.predict_prompts(model, tok, prompts, batch_size=batch_size, progress=False, signals=test_sig),
        thinking,
    )
    dprompts = dev_prompts(estimator_dir, dev.ids)
    head, _, _ = fit_pref(
        model, tok, dprompts, dev, conf_signals=False, seed=seed, batch_size=batch_size, progress=False
    )
    out["pref_without_conf_features"] = _score(
        test, head.predict_prompts(model, tok, prompts, batch_size=batch_size, progress=False), thinking
    )
    return out


def ablations_markdown(results: dict) -> str:
    rows = [
        [
            name,
            f"{r['accuracy']:.3f}",
            f"{r['mean_tokens']:.1f}",
            f"{r['mean_lambda']:.2f}",
            f"{r['vs_thinking']['diff']:+.3f} [{r['vs_thinking']['ci95'][0]:+.3f}, {r['vs_thinking']['ci95'][1]:+.3f}]",
            f"{r['vs_thinking']['mcnemar_p']:.3g}",
        ]
        for name, r in results.items()
    ]
    return markdown_table(["variant", "accuracy", "mean tokens", "mean λ", "Δ vs Thinking [95% CI]", "McNemar p"], rows)


def main(argv=None) -> int:
    """The script's entry (see the module doc). Sets torch to one intra-op thread for the whole process."""
    from dami_kernels.pair import load_pair_and_tokenizer
    from dami_kernels.testbed import testbed_dirs

    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    model, tok = load_pair_and_tokenizer(*testbed_dirs(), dtype=torch.float32, device="cpu")
    res = run_ablations(model, tok, argv[0], argv[1] if len(argv) > 1 else SHIPPED_DIR)
    Path(argv[0], "ablations.json").write_text(json.dumps(res, indent=1))
    print(ablations_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
