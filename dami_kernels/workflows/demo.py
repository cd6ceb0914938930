"""`dami demo`: DAMI on the shipped testbed pair, start to finish, in a few minutes on a CPU.

1. N held-out problems are drawn by the seed from the testbed's held-out reserve (never trained on by
   the pair, and disjoint from the estimators' train split).
2. The fixed-λ sweep runs every problem at every grid λ through the fused engine; it gives the
   Instruct (λ=0) and Thinking (λ=1) baselines, the frontier, and the oracle (cheapest correct λ).
3. Both estimators (shipped, trained on a separate train split) pick λ(q) per problem: DAMI-Conf from
   one batched forward of both endpoints per answer token, DAMI-Pref from frozen query features.
4. ONE mixed-λ generation pass runs every problem at its DAMI-Conf λ and again at its DAMI-Pref λ;
   their accuracy and tokens come from that pass.
Writes report.json, report.md, frontier.png and the per-item logs into the output directory.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from dami_kernels.estimators.conf import conf_signals
from dami_kernels.estimators.store import SHIPPED_DIR, load_estimator
from dami_kernels.evaluation.runner import run_items, summarize, write_records
from dami_kernels.evaluation.tables import markdown_table
from dami_kernels.evaluation.sweep import (DEFAULT_GRID, plot_frontier, representation_continuity, sweep_records,
                                           sweep_table, table_markdown)
from dami_kernels.workflows import DEMO_DEFAULT_N as DEFAULT_N
from dami_kernels.workflows.train_estimators import rollouts_from_records

TARGETS = {  # issue targets: accuracy slack vs Thinking, token ratio vs Thinking
    "dami_pref": {"max_accuracy_drop": 0.01, "max_token_ratio": 0.60},
    "dami_conf": {"max_accuracy_drop": 0.03, "max_token_ratio": 0.70},
}


def demo_items(n: int, seed: int, estimator_dir=SHIPPED_DIR, mix=None):
    """n held-out testbed problems drawn by `seed`; checked to be disjoint from the estimators' train
    problems (train splits are drawn outside the held-out reserve)."""
    from dami_kernels.testbed import DEFAULT_MIX, heldout_sample

    items = heldout_sample(n, seed, mix=mix or DEFAULT_MIX)
    train = Path(estimator_dir) / "train_ids.json"
    if train.exists():
        overlap = {it.id for it in items} & set(json.loads(train.read_text()))
        if overlap:
            raise ValueError(f"{len(overlap)} demo problems are in the estimators' train split, e.g. "
                             f"{sorted(overlap)[:3]}; retrain the estimators on `train_items`")
    return items


def check_targets(methods: dict, frontier_acc) -> dict:
    """Each estimator against the issue's targets and the fixed-λ frontier (measured, pass or fail)."""
    think = methods["thinking"]
    out = {}
    for name, t in TARGETS.items():
        m = methods[name]
        ratio = m["mean_tokens"] / think["mean_tokens"]
        front = frontier_acc(m["mean_tokens"])
        out[name] = {
            "accuracy_minus_thinking": m["accuracy"] - think["accuracy"],
            "token_ratio_vs_thinking": ratio,
            "frontier_accuracy_at_its_tokens": front,
            "accuracy_target_met": m["accuracy"] >= think["accuracy"] - t["max_accuracy_drop"] - 1e-12,
            "token_target_met": ratio <= t["max_token_ratio"],
            "above_frontier": m["accuracy"] > front,
        }
    return out


def run_demo(out_dir, seed: int = 0, n: int = DEFAULT_N, grid=DEFAULT_GRID, batch_size: int = 512,
             examples: int = 6, progress: bool = True, log=print, pair_dirs=None,
             estimator_dir=SHIPPED_DIR, mix=None) -> dict:
    """The study above. pair_dirs (instruct, thinking) and estimator_dir default to the shipped ones."""
    from dami_kernels.hf import load_pair_and_tokenizer
    from dami_kernels.testbed import testbed_dirs
    from dami_kernels.testbed.training import MAX_NEW_TOKENS

    if n < 1:
        raise ValueError(f"n must be a positive number of problems, got {n}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model, tok = load_pair_and_tokenizer(*(pair_dirs or testbed_dirs()), dtype=torch.float32, device="cpu")
    from dami_kernels.testbed import DEFAULT_MIX

    mix = tuple(mix or DEFAULT_MIX)
    items = demo_items(n, seed, estimator_dir, mix)
    prompts = [it.prompt for it in items]
    run = dict(batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS, progress=progress)

    log(f"[1/3] sweep: {n} problems x {len(grid)} λ values")
    sweep, sweep_s = sweep_records(model, tok, items, grid, **run)
    table = sweep_table(sweep)
    rollouts = rollouts_from_records(sweep)
    continuity = representation_continuity(model, tok, prompts[:32], grid)

    log("[2/3] estimators: DAMI-Conf and DAMI-Pref pick λ(q)")
    conf, pref = load_estimator("conf", estimator_dir), load_estimator("pref", estimator_dir)
    t_est = time.perf_counter()
    # Both estimators use DAMI-Conf's signals (Pref as two of its features): measure them once.
    signals = conf_signals(model, tok, prompts, conf.max_answer_tokens, conf.think_prefix,
                           batch_size=batch_size, progress=progress)
    lam_conf = conf.lam_from_signals(signals)
    lam_pref = pref.predict_prompts(model, tok, prompts, batch_size=batch_size, progress=progress,
                                    signals=signals)
    est_s = time.perf_counter() - t_est

    log("[3/3] one mixed-λ pass: every problem at its DAMI-Conf λ and at its DAMI-Pref λ")
    mixed, mixed_s = run_items(model, tok, items + items, lam_conf.tolist() + lam_pref.tolist(), **run)
    rec_conf, rec_pref = mixed[:n], mixed[n:]

    by_lam = {r["lam"]: r for r in table}
    methods = {
        "instruct": {k: by_lam[min(grid)][k] for k in ("accuracy", "mean_tokens")},
        "thinking": {k: by_lam[max(grid)][k] for k in ("accuracy", "mean_tokens")},
        "dami_conf": {k: v for k, v in summarize(rec_conf).items() if k != "n"},
        "dami_pref": {k: v for k, v in summarize(rec_pref).items() if k != "n"},
        "oracle": rollouts.evaluate(rollouts.oracle_lam()),
    }
    # The same λ choices read off the sweep (nearest grid point): a consistency check of the pass above.
    lookup = {name: rollouts.evaluate({it.id: float(v) for it, v in zip(items, lam)})
              for name, lam in (("dami_conf", lam_conf), ("dami_pref", lam_pref))}
    report = {
        "seed": seed, "n_problems": n, "level_mix": list(mix), "grid": list(grid),
        "sweep": table,
        "continuity": continuity,
        "methods": methods,
        "targets": check_targets(methods, rollouts.frontier_accuracy),
        "sweep_lookup_of_estimator_lambdas": lookup,
        "estimators": {"dir": str(estimator_dir), "conf": conf.to_dict(), "pref_grid": pref.grid},
        "examples": [asdict(r) for r in (rec_conf[: examples // 2] + rec_pref[: examples - examples // 2])],
        "seconds": {"sweep": sweep_s, "estimators": est_s, "mixed_pass": mixed_s,
                    "total": time.perf_counter() - t0},
        "device": "cpu", "torch_threads": torch.get_num_threads(),
    }
    write_records(out_dir / "sweep_items.jsonl", sweep)
    write_records(out_dir / "mixed_items.jsonl", mixed)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "report.md").write_text(report_markdown(report))
    plot_frontier(table, out_dir / "frontier.png",
                  methods={k: methods[k] for k in ("dami_conf", "dami_pref", "oracle")}, continuity=continuity)
    return report


def methods_markdown(r: dict) -> str:
    """Accuracy, mean tokens and mean λ of each method (report["methods"])."""
    rows = [[name, f"{m['accuracy']:.3f}", f"{m['mean_tokens']:.1f}",
             f"{m['mean_lam']:.2f}" if "mean_lam" in m else "-"] for name, m in r["methods"].items()]
    return markdown_table(["method", "accuracy", "mean tokens", "mean λ"], rows)


def targets_markdown(r: dict) -> str:
    """Each estimator against the issue's targets and the fixed-λ frontier (report["targets"])."""
    rows = [[name, f"{t['accuracy_minus_thinking']:+.3f}", f"{t['token_ratio_vs_thinking']:.2f}",
             f"{t['frontier_accuracy_at_its_tokens']:.3f}", "met" if t["accuracy_target_met"] else "MISSED",
             "met" if t["token_target_met"] else "MISSED", "yes" if t["above_frontier"] else "NO"]
            for name, t in r["targets"].items()]
    return markdown_table(["estimator", "Δacc vs Thinking", "tokens / Thinking", "frontier acc at its tokens",
                           "accuracy target", "token target", "above frontier"], rows)


def time_line(r: dict) -> str:
    s, threads = r["seconds"], r["torch_threads"]
    return (f"Time: {s['total']:.1f} s in all (sweep {s['sweep']:.1f} s, estimators {s['estimators']:.1f} s, "
            f"mixed pass {s['mixed_pass']:.1f} s), CPU, {threads} thread{'' if threads == 1 else 's'}.")


def report_markdown(r: dict) -> str:
    lines = [f"# DAMI demo (seed {r['seed']}, {r['n_problems']} held-out testbed problems)", "",
             "## Fixed-λ sweep", "", table_markdown(r["sweep"], r["continuity"]), "", "## Methods", "",
             methods_markdown(r), "", "## Targets (measured)", "", targets_markdown(r), "",
             "## Examples from the mixed-λ pass", ""]
    for e in r["examples"]:
        out = e["output"].replace("\n", " ⏎ ")
        lines.append(f"- `{e['prompt']}` at λ={e['lam']:.2f}: `{out}` "
                     f"({e['tokens']} tokens, {'correct' if e['correct'] else 'wrong'}, answer {e['answer']})")
    lines += ["", time_line(r), ""]
    return "\n".join(lines)
