"""The pilot study: a fixed-λ sweep (accuracy and tokens per λ), its frontier plot, and the
representation continuity of hidden states between θ(λ) and the two endpoints."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dami_kernels.evaluation.data import EvalItem
from dami_kernels.evaluation.runner import ItemRecord, run_items, summarize, write_records
from dami_kernels.evaluation.tables import markdown_table
from dami_kernels.hf.lam import lambda_scope
from dami_kernels.hf.prompts import encode_prompts, left_pad, pad_token_id, position_ids

DEFAULT_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def sweep_records(model, tokenizer, items: list[EvalItem], grid=DEFAULT_GRID, **run_kwargs
                  ) -> tuple[list[ItemRecord], float]:
    """Every item at every grid λ. All (item, λ) rows go through `run_items` as one list of mixed-λ
    batches; rows are ordered by λ so that a batch holds rows of similar output length (a batch runs
    until its longest row ends). Returns (records ordered by λ then item, wall seconds)."""
    grid = [float(g) for g in grid]
    if not grid:
        raise ValueError("grid needs at least one λ value")
    rows = [it for _ in grid for it in items]
    lams = [g for g in grid for _ in items]
    return run_items(model, tokenizer, rows, lams, **run_kwargs)


def sweep_table(records: list[ItemRecord]) -> list[dict]:
    """[{lam, n, accuracy, mean_tokens}] per distinct λ, in increasing λ."""
    by_lam: dict[float, list[ItemRecord]] = {}
    for r in records:
        by_lam.setdefault(r.lam, []).append(r)
    table = []
    for lam in sorted(by_lam):
        s = summarize(by_lam[lam])
        table.append({"lam": lam, "n": s["n"], "accuracy": s["accuracy"], "mean_tokens": s["mean_tokens"]})
    return table


@torch.no_grad()
def representation_continuity(model, tokenizer, prompts: list[str], grid=DEFAULT_GRID) -> list[dict]:
    """Cosine similarity of the last hidden state (mean over prompt tokens) between θ(λ) and each
    endpoint, averaged over prompts: [{lam, cos_instruct, cos_thinking}]. One forward pass with
    P x G rows (every prompt at every grid λ, plus both endpoints)."""
    grid = sorted({0.0, 1.0, *[float(g) for g in grid]})
    enc = encode_prompts(tokenizer, prompts)
    device = next(model.parameters()).device
    ids, mask = left_pad([e for _ in grid for e in enc], pad_token_id(tokenizer), device)
    lam = torch.tensor([g for g in grid for _ in enc], dtype=torch.float32)
    with lambda_scope(model, lam):
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                    output_hidden_states=True)
    h = out.hidden_states[-1].float()  # [G*P, T, H]
    m = mask.unsqueeze(-1).float()
    pooled = ((h * m).sum(1) / m.sum(1)).reshape(len(grid), len(enc), -1)  # [G, P, H]
    cos = torch.nn.functional.cosine_similarity
    to_i = cos(pooled, pooled[grid.index(0.0)].unsqueeze(0), dim=-1).mean(1)
    to_t = cos(pooled, pooled[grid.index(1.0)].unsqueeze(0), dim=-1).mean(1)
    return [{"lam": g, "cos_instruct": float(a), "cos_thinking": float(b)}
            for g, a, b in zip(grid, to_i, to_t)]


def plot_frontier(table: list[dict], path: Path, methods: dict | None = None,
                  continuity: list[dict] | None = None) -> None:
    """PNG: accuracy against mean generated tokens for each fixed λ (labelled), plus optional method
    points {name: {accuracy, mean_tokens}}; a second panel with the representation continuity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if continuity else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.6), squeeze=False)
    ax = axes[0][0]
    xs = [r["mean_tokens"] for r in table]
    ys = [r["accuracy"] for r in table]
    ax.plot(xs, ys, "-o", color="tab:blue", label="fixed λ")
    for r in table:
        ax.annotate(f"λ={r['lam']:g}", (r["mean_tokens"], r["accuracy"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=7)
    markers = iter(["*", "D", "s", "^", "v", "P"])
    for name, res in (methods or {}).items():
        ax.scatter([res["mean_tokens"]], [res["accuracy"]], marker=next(markers, "o"), s=90, zorder=3,
                   label=name)
    ax.set_xlabel("mean generated tokens per query")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs. tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if continuity:
        ax2 = axes[0][1]
        lams = [r["lam"] for r in continuity]
        ax2.plot(lams, [r["cos_instruct"] for r in continuity], "-o", label="cos(h(λ), h(0))")
        ax2.plot(lams, [r["cos_thinking"] for r in continuity], "-s", label="cos(h(λ), h(1))")
        ax2.set_xlabel("λ")
        ax2.set_ylabel("cosine similarity of last hidden state")
        ax2.set_title("representation continuity")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table_markdown(table: list[dict], continuity: list[dict] | None = None) -> str:
    """λ, accuracy and mean tokens per grid λ; with `continuity`, its two cosine similarities too."""
    headers = ["λ", "accuracy", "mean tokens"]
    rows = [[f"{r['lam']:g}", f"{r['accuracy']:.3f}", f"{r['mean_tokens']:.1f}"] for r in table]
    if continuity:
        cos = {c["lam"]: c for c in continuity}
        headers += ["cos(h(λ), h(0))", "cos(h(λ), h(1))"]
        for row, r in zip(rows, table):
            c = cos.get(r["lam"])
            row += [f"{c['cos_instruct']:.3f}", f"{c['cos_thinking']:.3f}"] if c else ["-", "-"]
    return markdown_table(headers, rows)


def run_sweep(model, tokenizer, items: list[EvalItem], out_dir, grid=DEFAULT_GRID,
              continuity_prompts: int = 32, **run_kwargs) -> dict:
    """The pilot study: writes `sweep_items.jsonl`, `sweep.json`, `sweep.md` and `frontier.png` to
    out_dir and returns {"table", "continuity", "seconds", "records"}."""
    out_dir = Path(out_dir)
    records, seconds = sweep_records(model, tokenizer, items, grid, **run_kwargs)
    table = sweep_table(records)
    continuity = representation_continuity(
        model, tokenizer, [it.prompt for it in items[:continuity_prompts]], grid)
    write_records(out_dir / "sweep_items.jsonl", records)
    (out_dir / "sweep.json").write_text(json.dumps(
        {"table": table, "continuity": continuity, "seconds": seconds}, indent=1))
    (out_dir / "sweep.md").write_text("# λ sweep\n\n" + table_markdown(table, continuity) + "\n")
    plot_frontier(table, out_dir / "frontier.png", continuity=continuity)
    return {"table": table, "continuity": continuity, "seconds": seconds, "records": records}
