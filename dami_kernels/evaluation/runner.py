"""Evaluation runs: batched mixed-λ generation over eval items, per-item records and a summary."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dami_kernels.evaluation.data import EvalItem
from dami_kernels.evaluation.grading import grade
from dami_kernels.generation import generate


@dataclass
class ItemRecord:
    """One generated answer: the item, its λ, the output text, generated tokens (EOS included), the
    extracted prediction and whether it matches the reference answer."""

    id: str
    prompt: str
    lam: float
    output: str
    tokens: int
    pred: str | None
    answer: str
    correct: bool
    difficulty: int | str | None = None


def run_items(
    model,
    tokenizer,
    items: list[EvalItem],
    lams,
    *,
    batch_size: int = 64,
    max_new_tokens: int = 256,
    progress: bool = True,
    **generation_kwargs,
) -> tuple[list[ItemRecord], float]:
    """Greedy-decode every item at its own λ (one number, or one per item) in mixed-λ batches, and
    grade each output with the item's grader (`grading.grade`).

    Returns (records in item order, wall seconds). Extra keyword arguments go to `model.generate`.
    """
    if not items:
        raise ValueError("no eval items to run")
    generation_kwargs.setdefault("do_sample", False)
    start = time.perf_counter()
    results = generate(
        model,
        tokenizer,
        [it.prompt for it in items],
        lams,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
        **generation_kwargs,
    )
    seconds = time.perf_counter() - start
    records = []
    for res in results:
        item = items[res.prompt_index]
        pred, correct = grade(res.text, item.answer, item.grader)
        records.append(
            ItemRecord(
                item.id, item.prompt, res.lam, res.text, res.num_tokens, pred, item.answer, correct, item.difficulty
            )
        )
    return records, seconds


def summarize(records: list[ItemRecord], seconds: float | None = None) -> dict:
    """Accuracy, mean generated tokens, mean λ (and tokens/s when seconds is given) of records."""
    n = len(records)
    if n == 0:
        raise ValueError("no records to summarize")
    total = sum(r.tokens for r in records)
    out = {
        "n": n,
        "accuracy": sum(r.correct for r in records) / n,
        "mean_tokens": total / n,
        "mean_lam": sum(r.lam for r in records) / n,
    }
    if seconds is not None:
        out["seconds"] = seconds
        out["tokens_per_s"] = total / seconds if seconds > 0 else float("nan")
    return out


def write_records(path: Path, records: list[ItemRecord]) -> None:
    """Per-item JSONL: id, prompt, lam, output, tokens, pred, answer, correct, difficulty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")


def read_records(path: Path) -> list[ItemRecord]:
    with open(path) as f:
        return [ItemRecord(**json.loads(line)) for line in f if line.strip()]


def evaluate(model, tokenizer, items: list[EvalItem], lams, out_dir=None, **kwargs) -> dict:
    """Run, summarize and (when out_dir is given) write `items.jsonl` and `summary.json`."""
    records, seconds = run_items(model, tokenizer, items, lams, **kwargs)
    summary = summarize(records, seconds)
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_records(out_dir / "items.jsonl", records)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return {"summary": summary, "records": records}
