"""The testbed pair's targeted properties, measured and recorded in testbed_metrics.json:

- instruct_gap: Instruct accuracy <= Thinking − 0.15; instruct_token_ratio: Instruct tokens <= 0.35 ×
  Thinking's; thinking_not_at_ceiling: 0.85 <= Thinking <= 0.95 (balanced mix, the metrics' test draw);
- complementarity: the fraction of problems Instruct gets right and Thinking wrong (> 0 is the target),
  and P(Instruct right | Thinking wrong);
- train_overlap: a fresh seeded draw of 1000 balanced problems made anywhere in the space (ignoring the
  split) against every problem the pair trained on (replayed), commutative variants counted (< 1%);
- signals_auroc: each DAMI-Conf signal's AUROC for predicting an Instruct error on a study's test draw.

    python -m dami_kernels.workflows.pair_properties STUDY_DIR     # a `dami demo` output directory
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dami_kernels.evaluation.preregistered import PAIR_TARGETS
from dami_kernels.evaluation.runner import read_records

OVERLAP_SEED = 12345


def train_overlap(args: dict, seed: int = OVERLAP_SEED, n: int = 1000) -> float:
    """Fraction of a fresh balanced draw of n problems (anywhere in the space) that the pair trained on."""
    from dami_kernels.testbed.tasks import make_problems
    from dami_kernels.testbed.training import trained_canonicals

    width = args.get("base_width", 1)  # JSON stores a tuple of widths as a list
    trained = trained_canonicals(
        args["base_steps"],
        args["ft_steps"],
        args["batch_size"],
        args["seed"],
        args.get("thinking_steps"),
        tuple(width) if isinstance(width, list) else width,
    )
    return sum(p.canonical in trained for p in make_problems(n, seed)) / n


def pair_properties(metrics: dict, study_dir) -> dict:
    """The properties above, each with its target and whether it was met."""
    ti, tt = metrics["instruct"], metrics["thinking"]
    recs = read_records(Path(study_dir) / "sweep_items.jsonl")
    at = {lam: {r.id: r.correct for r in recs if r.lam == lam} for lam in (0.0, 1.0)}
    ids = list(at[1.0])
    both = sum(at[0.0][i] and not at[1.0][i] for i in ids)
    think_wrong = sum(not at[1.0][i] for i in ids)
    report = json.loads((Path(study_dir) / "report.json").read_text())
    lo, hi = PAIR_TARGETS["thinking_accuracy_range"]
    overlap = train_overlap(metrics["args"])
    ratio = ti["mean_tokens"] / tt["mean_tokens"]
    return {
        "measured_on": {
            "metrics": f"test split, seed {metrics['heldout_seed']}, n {metrics['eval_n']}, balanced",
            "study": f"test split, seed {report['seed']}, n {report['n']}, mix {report['mix']}",
        },
        "instruct_gap": {
            "value": tt["accuracy"] - ti["accuracy"],
            "target": f">= {PAIR_TARGETS['instruct_gap_min']}",
            "met": tt["accuracy"] - ti["accuracy"] >= PAIR_TARGETS["instruct_gap_min"],
        },
        "instruct_token_ratio": {
            "value": ratio,
            "target": f"<= {PAIR_TARGETS['instruct_token_ratio_max']}",
            "met": ratio <= PAIR_TARGETS["instruct_token_ratio_max"],
        },
        "thinking_not_at_ceiling": {
            "value": tt["accuracy"],
            "target": f"in [{lo}, {hi}]",
            "met": lo <= tt["accuracy"] <= hi,
        },
        "complementarity": {
            "instruct_right_thinking_wrong": both / len(ids),
            "p_instruct_right_given_thinking_wrong": both / think_wrong if think_wrong else None,
            "target": "> 0",
            "met": both > 0,
        },
        "train_overlap": {
            "value": overlap,
            "target": f"< {PAIR_TARGETS['train_overlap_max']}",
            "met": overlap < PAIR_TARGETS["train_overlap_max"],
            "note": "fresh draw made anywhere in the space; the dev/test splits never meet "
            "training (0 by construction)",
        },
        "signals_auroc": report["signals_auroc"],
    }


def main(argv=None) -> int:
    from dami_kernels.testbed.paths import METRICS_FILE

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit(__doc__)
    metrics = json.loads(METRICS_FILE.read_text())
    metrics["properties"] = pair_properties(metrics, argv[0])
    METRICS_FILE.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics["properties"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
