"""`dami demo` / `dami eval --compare`: DAMI against Thinking and the baselines, with pre-registered
paired statistics (`evaluation.preregistered`).

1. Problems: a fresh seeded draw of n problems from the testbed's "test" split (never trained on by the
   pair, disjoint from the estimators' "dev" split), or any eval items (`run_study`).
2. The fixed-λ sweep runs every problem at every grid λ: Instruct (λ=0), Thinking (λ=1), the frontier,
   the oracle (upper bound: uses the test labels) and the rollouts the baselines are scored on.
3. Both estimators pick λ(q): DAMI-Conf from one batched forward of both endpoints per answer token,
   DAMI-Pref from frozen query features (and Conf's signals).
4. ONE mixed-λ generation pass runs every problem at its DAMI-Conf λ and again at its DAMI-Pref λ.
5. Baselines (`workflows.baselines`), matched to DAMI-Pref: syntax_rule (fit on dev), random_matched,
   frontier_matched; the text-only router (`workflows.text_router`, fit on dev) at DAMI-Conf's and at
   DAMI-Pref's tokens. Every method against Thinking: difference, paired bootstrap 95% CI, exact McNemar p.
Writes report.json (the issue's contract, nothing else), details.json (targets, continuity, baselines'
fits, timings), report.md, frontier.png, sweep_items.jsonl and mixed_items.jsonl (with a method field).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from dami_kernels.estimators.conf import conf_signals
from dami_kernels.estimators.rollouts import Rollouts
from dami_kernels.estimators.store import SHIPPED_DIR, load_estimator
from dami_kernels.evaluation import preregistered as prereg
from dami_kernels.evaluation.frontier_plot import plot_report, plot_title
from dami_kernels.evaluation.runner import run_items, summarize, write_records
from dami_kernels.evaluation.stats import auroc, compare
from dami_kernels.evaluation.sweep import (
    CONTINUITY_PROMPTS,
    DEFAULT_GRID,
    representation_continuity,
    sweep_records,
    sweep_table,
)
from dami_kernels.workflows import DEMO_DEFAULT_N as DEFAULT_N
from dami_kernels.workflows import baselines as bl
from dami_kernels.workflows import text_router as trt
from dami_kernels.workflows.demo_report import report_markdown
from dami_kernels.workflows.train_estimators import conf_signal_aurocs, dev_prompts, rollouts_from_records

# Every method of report.json, in order: the pre-registered ones, then the text-only router at each
# estimator's tokens.
REPORT_METHODS = (*prereg.METHODS, "text_router_conf", "text_router_pref")


def demo_items(n: int, seed: int, estimator_dir=SHIPPED_DIR, mix=None):
    """A fresh draw of n test-split problems by `seed`; checked to be disjoint from the estimators'
    train (dev) problems."""
    from dami_kernels.testbed import heldout_sample

    items = heldout_sample(n, seed, mix=tuple(mix or prereg.PRIMARY_MIX), split="test")
    train = Path(estimator_dir) / "train_ids.json"
    if train.exists():
        overlap = {it.id for it in items} & set(json.loads(train.read_text()))
        if overlap:
            raise ValueError(
                f"{len(overlap)} evaluation problems are in the estimators' train split, e.g. "
                f"{sorted(overlap)[:3]}; fit the estimators on the dev split"
            )
    return items


_PER_ITEM = ("outcomes", "exact", "p_correct")


def _entry(outcomes, exact, thinking, accuracy, mean_tokens, mean_lambda) -> dict:
    return {
        "accuracy": float(accuracy),
        "mean_tokens": float(mean_tokens),
        "mean_lambda": None if mean_lambda is None else float(mean_lambda),
        "vs_thinking": compare(outcomes, thinking, exact),
    }


def matched_baselines(
    test: Rollouts,
    prompts: list[str],
    dev: Rollouts,
    dev_prompts_: list[str],
    lam,
    mean_tokens: float,
    seed: int,
    router: dict | None = None,
) -> dict:
    """syntax_rule, random_matched, frontier_matched and text_router at a method's mean tokens / its λ
    values (`router`: a `text_router.fit_text_router` fit on dev, fitted here when None)."""
    think_test = float(test.tokens[:, -1].mean())
    think_dev = float(dev.tokens[:, -1].mean())
    budget = mean_tokens / think_test * think_dev
    rule = bl.fit_syntax_rule(dev, dev_prompts_, budget)
    router = router if router is not None else trt.fit_text_router(dev, dev_prompts_)
    tuned = trt.tune_text_router(router, dev, budget)
    return {
        "syntax_rule": bl.syntax_rule(test, prompts, rule, seed),
        "random_matched": bl.random_matched(test, lam, seed),
        "frontier_matched": bl.frontier_matched(test, mean_tokens, seed),
        "text_router": {
            **trt.text_router(test, prompts, router, tuned["c"]),
            "model": router["kind"],
            "dev_budget": budget,
            **{f"tuned_{k}": v for k, v in tuned.items()},
        },
    }


def check_targets(methods: dict, per_method_baselines: dict) -> dict:
    """Each estimator against the pre-registered targets (met / MISSED, with the measured numbers)."""
    think = methods["thinking"]
    out = {}
    for name, t in prereg.TARGETS.items():
        m = methods[name]
        vs = m["vs_thinking"]
        ratio = m["mean_tokens"] / think["mean_tokens"]
        row = {
            "diff_vs_thinking": vs["diff"],
            "ci95": vs["ci95"],
            "token_ratio": ratio,
            "accuracy_target": f"diff >= {t['min_diff']}"
            + (f" and CI lo >= {t['min_ci_lo']}" if t["min_ci_lo"] is not None else ""),
            "accuracy_met": vs["diff"] >= t["min_diff"] - 1e-12
            and (t["min_ci_lo"] is None or vs["ci95"][0] >= t["min_ci_lo"] - 1e-12),
            "token_target": f"ratio <= {t['max_token_ratio']}",
            "token_met": ratio <= t["max_token_ratio"],
            "stretch_above_thinking": vs["ci95"][0] > prereg.STRETCH["min_ci_lo_exclusive"],
        }
        for base in prereg.BASELINES_TO_BEAT:
            c = per_method_baselines[name][base]
            row[f"vs_{base}"] = {
                "baseline_accuracy": c["accuracy"],
                "baseline_mean_tokens": c["mean_tokens"],
                **c["vs_method"],
                "met": c["vs_method"]["diff"] >= prereg.MIN_GAIN_OVER_BASELINES - 1e-12
                and c["vs_method"]["ci95"][0] > 0,
            }
        out[name] = row
    return out


def run_study(
    model,
    tok,
    items,
    out_dir,
    *,
    seed: int,
    mix=None,
    estimator_dir=SHIPPED_DIR,
    grid=DEFAULT_GRID,
    batch_size: int = 512,
    max_new_tokens: int = 64,
    examples: int = 3,
    progress: bool = True,
    log=print,
    meta: dict | None = None,
) -> dict:
    """Steps 2-5 above on `items`; writes the files; returns {"report": ..., "details": ...}."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(items)
    prompts = [it.prompt for it in items]
    run = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)
    grid = [float(g) for g in grid]
    if 0.0 not in grid or 1.0 not in grid:
        raise ValueError(f"grid must hold both endpoints 0 and 1, got {grid}")

    log(f"[1/4] sweep: {n} problems x {len(grid)} λ values")
    sweep, sweep_s = sweep_records(model, tok, items, grid, **run)
    table = sweep_table(sweep)
    test = rollouts_from_records(sweep)
    if test.ids != [it.id for it in items]:
        raise ValueError("item ids must be unique")
    t_cont = time.perf_counter()
    continuity = representation_continuity(model, tok, prompts[:CONTINUITY_PROMPTS], grid)
    cont_s = time.perf_counter() - t_cont

    log("[2/4] estimators: DAMI-Conf and DAMI-Pref pick λ(q)")
    conf, pref = load_estimator("conf", estimator_dir), load_estimator("pref", estimator_dir)
    t_est = time.perf_counter()
    signals = conf_signals(
        model, tok, prompts, conf.max_answer_tokens, conf.think_prefix, batch_size=batch_size, progress=progress
    )
    lam_conf = conf.lam_from_signals(signals)
    lam_pref = pref.predict_prompts(model, tok, prompts, batch_size=batch_size, progress=progress, signals=signals)
    est_s = time.perf_counter() - t_est

    log("[3/4] one mixed-λ pass: every problem at its DAMI-Conf λ and at its DAMI-Pref λ")
    mixed, mixed_s = run_items(model, tok, items + items, lam_conf.tolist() + lam_pref.tolist(), **run)
    rec = {"dami_conf": mixed[:n], "dami_pref": mixed[n:]}

    log("[4/4] baselines and paired statistics")
    t_stat = time.perf_counter()
    i0, i1 = grid.index(0.0), grid.index(1.0)
    think = test.correct[:, i1].to(torch.float64)
    methods = {}
    for name, j in (("thinking", i1), ("instruct", i0)):
        c, tk = bl.outcomes_at(test, torch.full((n,), j, dtype=torch.long))
        methods[name] = _entry(c, None, think, c.mean(), tk.mean(), grid[j])
    outcomes = {}
    for name in ("dami_conf", "dami_pref"):
        s = summarize(rec[name])
        outcomes[name] = torch.tensor([float(r.correct) for r in rec[name]], dtype=torch.float64)
        methods[name] = _entry(outcomes[name], None, think, s["accuracy"], s["mean_tokens"], s["mean_lam"])
    o = bl.oracle(test)
    methods["oracle"] = _entry(o["outcomes"], None, think, o["accuracy"], o["mean_tokens"], o["mean_lambda"])
    dev = Rollouts.from_jsonl(Path(estimator_dir) / "rollouts.jsonl")
    dprompts = dev_prompts(estimator_dir, dev.ids)
    router = trt.fit_text_router(dev, dprompts)
    per_method = {}
    for name, lam in (("dami_conf", lam_conf), ("dami_pref", lam_pref)):
        base = matched_baselines(test, prompts, dev, dprompts, lam, methods[name]["mean_tokens"], seed, router)
        for b in base.values():
            b["vs_method"] = compare(outcomes[name], b["outcomes"], exact_reference=b.get("exact"))
        per_method[name] = base
    for bname, b in per_method["dami_pref"].items():
        if bname != "text_router":
            methods[bname] = _entry(
                b["outcomes"], b.get("exact"), think, b["accuracy"], b["mean_tokens"], b["mean_lambda"]
            )
    for name in ("dami_conf", "dami_pref"):
        b = per_method[name]["text_router"]
        key = "text_router_" + name.split("_")[1]
        methods[key] = _entry(b["outcomes"], None, think, b["accuracy"], b["mean_tokens"], b["mean_lambda"])
        methods[name]["vs_text_router"] = compare(outcomes[name], b["outcomes"])
    methods = {k: methods[k] for k in REPORT_METHODS}
    err = ~test.correct[:, i0]
    p_instruct = per_method["dami_conf"]["text_router"]["p_correct"][:, i0]
    signals_auroc = {
        **conf_signal_aurocs(signals, err),
        "prompt_length": auroc(torch.tensor([float(len(p)) for p in prompts]), err),
        "text": auroc(1.0 - p_instruct, err),
    }
    signals_auroc = {k: (None if v != v else v) for k, v in signals_auroc.items()}  # NaN (one class) -> null
    stat_s = time.perf_counter() - t_stat

    mix = list(mix) if mix is not None else None
    report = {
        "n": n,
        "seed": seed,
        "mix": mix,
        "margin": prereg.MARGIN,
        "methods": methods,
        "sweep": [{k: r[k] for k in ("lam", "accuracy", "mean_tokens")} for r in table],
        "signals_auroc": signals_auroc,
    }
    lookup = {name: test.evaluate(lam) for name, lam in (("dami_conf", lam_conf), ("dami_pref", lam_pref))}
    examples_by_method = _examples(items, test, rec, grid, sweep, examples)
    details = {
        **(meta or {}),
        "n": n,
        "seed": seed,
        "mix": mix,
        "grid": grid,
        "preregistered": {
            "margin": prereg.MARGIN,
            "targets": prereg.TARGETS,
            "min_gain_over_baselines": prereg.MIN_GAIN_OVER_BASELINES,
            "baselines_to_beat": list(prereg.BASELINES_TO_BEAT),
            "bootstrap": {"resamples": prereg.BOOTSTRAP_RESAMPLES, "seed": prereg.BOOTSTRAP_SEED},
        },
        "targets": check_targets(methods, per_method),
        "baselines_matched_to": "dami_pref",
        "baselines_at_conf_tokens": {
            k: {kk: vv for kk, vv in v.items() if kk not in _PER_ITEM} for k, v in per_method["dami_conf"].items()
        },
        "text_router": {
            "model": router["kind"],
            "model_choice": "lowest 5-fold CV log-loss on dev (mean over the grid λ)",
            "cv_logloss": router["cv_logloss"],
            "features": int(trt.text_features(prompts[:1], router["width"], router["operands"]).shape[1]),
            **{
                f"at_{name}_tokens": {k: v for k, v in per_method[name]["text_router"].items() if k not in _PER_ITEM}
                for name in ("dami_conf", "dami_pref")
            },
        },
        "frontier_mixture": per_method["dami_pref"]["frontier_matched"]["mixture"],
        "continuity": continuity,
        "sweep_table": table,
        "sweep_lookup_of_estimator_lambdas": lookup,
        "estimators": {"dir": str(estimator_dir), "conf": conf.to_dict(), "pref_grid": pref.grid},
        "examples": examples_by_method,
        "seconds": {
            "sweep": sweep_s,
            "continuity": cont_s,
            "estimators": est_s,
            "mixed_pass": mixed_s,
            "statistics": stat_s,
            "total": time.perf_counter() - t0,
        },
        "device": str(next(model.parameters()).device),
        "torch_threads": torch.get_num_threads(),
    }
    write_records(out_dir / "sweep_items.jsonl", sweep)
    with open(out_dir / "mixed_items.jsonl", "w") as f:
        for name, rs in rec.items():
            for r in rs:
                f.write(json.dumps({"method": name, **asdict(r)}) + "\n")
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "details.json").write_text(json.dumps(details, indent=1))
    (out_dir / "report.md").write_text(report_markdown(report, details))
    plot_report(
        report,
        out_dir / "frontier.png",
        continuity=continuity,
        title=plot_title({**(meta or {}), "n": n, "seed": seed, "mix": mix}),
    )
    return {"report": report, "details": details}


def _examples(items, test: Rollouts, rec: dict, grid, sweep, k: int) -> list[dict]:
    """Up to k problems per method, preferring ones where the method and Thinking disagree."""
    by_key = {(r.id, r.lam): r for r in sweep}
    think = test.correct[:, grid.index(1.0)]
    out = []
    for name, j in (("thinking", grid.index(1.0)), ("instruct", grid.index(0.0))):
        rows = [by_key[(it.id, grid[j])] for it in items]
        order = sorted(
            range(len(rows)), key=lambda i: rows[i].correct == bool(think[i]) if name != "thinking" else rows[i].correct
        )
        out += [{"method": name, **asdict(rows[i])} for i in order[:k]]
    for name, rs in rec.items():
        order = sorted(range(len(rs)), key=lambda i: rs[i].correct == bool(think[i]))
        out += [{"method": name, **asdict(rs[i])} for i in order[:k]]
    return out


def run_demo(
    out_dir,
    seed: int = 0,
    n: int = DEFAULT_N,
    grid=DEFAULT_GRID,
    batch_size: int = 512,
    examples: int = 3,
    progress: bool = True,
    log=print,
    pair_dirs=None,
    estimator_dir=SHIPPED_DIR,
    mix=None,
) -> dict:
    """The study above on the shipped pair (or `pair_dirs`) and a fresh draw of n test problems.
    Returns report.json's dict with "details" (details.json) added."""
    from dami_kernels.pair import load_pair_and_tokenizer
    from dami_kernels.testbed import testbed_dirs
    from dami_kernels.testbed.training import MAX_NEW_TOKENS

    if n < 1:
        raise ValueError(f"n must be a positive number of problems, got {n}")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model, tok = load_pair_and_tokenizer(*(pair_dirs or testbed_dirs()), dtype=torch.float32, device="cpu")
    mix = tuple(mix or prereg.PRIMARY_MIX)
    items = demo_items(n, seed, estimator_dir, mix)
    res = run_study(
        model,
        tok,
        items,
        out_dir,
        seed=seed,
        mix=mix,
        estimator_dir=estimator_dir,
        grid=grid,
        batch_size=batch_size,
        max_new_tokens=MAX_NEW_TOKENS,
        examples=examples,
        progress=progress,
        log=log,
        meta={"split": "test", "estimators": Path(estimator_dir).name},
    )
    res["details"]["seconds"]["with_loading"] = time.perf_counter() - t0
    (Path(out_dir) / "details.json").write_text(json.dumps(res["details"], indent=1))
    return {**res["report"], "details": res["details"]}
