"""The pilot study: a fixed-λ sweep (accuracy and tokens per λ), its frontier plot, and the
representation continuity between θ(λ) and the two endpoints (per-layer linear CKA and the position of
the hidden states along the segment between the endpoints')."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dami_kernels.evaluation.data import EvalItem
from dami_kernels.evaluation.frontier_plot import plot_frontier, plot_title
from dami_kernels.evaluation.runner import ItemRecord, run_items, summarize, write_records
from dami_kernels.evaluation.tables import markdown_table
from dami_kernels.hf.prompts import encode_prompts, pad_prompts, position_ids
from dami_kernels.pair.lambdas import lambda_scope

DEFAULT_GRID = tuple(round(0.1 * i, 1) for i in range(11))

CONTINUITY_PROMPTS = 256  # prompts for the CKA panel: CKA over few inputs is biased upwards


def sweep_records(
    model, tokenizer, items: list[EvalItem], grid=DEFAULT_GRID, **run_kwargs
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


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA between two representations of the same P inputs: x [..., P, H1], y [..., P, H2] -> [...].

        CKA = ‖Ỹᵀ X̃‖²_F / (‖X̃ᵀ X̃‖_F · ‖Ỹᵀ Ỹ‖_F),  X̃, Ỹ centred over the P inputs   ∈ [0, 1]
    (Kornblith et al. 2019). Invariant to rotations and isotropic scaling of either side."""
    x = (x - x.mean(-2, keepdim=True)).double()
    y = (y - y.mean(-2, keepdim=True)).double()
    cross = (y.transpose(-1, -2) @ x).pow(2).sum((-1, -2))
    xx = (x.transpose(-1, -2) @ x).pow(2).sum((-1, -2)).sqrt()
    yy = (y.transpose(-1, -2) @ y).pow(2).sum((-1, -2)).sqrt()
    return cross / (xx * yy).clamp_min(1e-300)


@torch.no_grad()
def pooled_hidden_states(model, tokenizer, prompts: list[str], grid, batch_size: int = 512) -> torch.Tensor:
    """Prompt representations at every grid λ and every layer: the hidden states (embeddings, then each
    decoder layer's output) mean-pooled over each prompt's tokens -> [G, L+1, P, H] float64."""
    enc = encode_prompts(tokenizer, prompts)
    device = next(model.parameters()).device
    rows = [(g, e) for g in grid for e in enc]
    out = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        ids, mask = pad_prompts(tokenizer, [e for _, e in chunk], device)
        lam = torch.tensor([g for g, _ in chunk], dtype=torch.float32)
        with lambda_scope(model, lam):
            hs = model(
                input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True
            ).hidden_states
        m = mask.unsqueeze(-1).double()
        out.append(torch.stack([(h.double() * m).sum(1) / m.sum(1) for h in hs], 1).cpu())  # [rows, L+1, H]
    pooled = torch.cat(out)  # [G*P, L+1, H]
    return pooled.reshape(len(grid), len(enc), *pooled.shape[1:]).transpose(1, 2)


def representation_continuity(model, tokenizer, prompts: list[str], grid=DEFAULT_GRID) -> list[dict]:
    """Where θ(λ)'s representations of the prompts sit between the endpoints', per grid λ:

    - ``cka_instruct`` / ``cka_thinking``: linear CKA (`linear_cka`, over the P prompts) of the pooled
      hidden states at λ against those at λ=0 / λ=1, averaged over layers (``*_per_layer``: each layer,
      index 0 = embeddings);
    - ``position``: the projection of h(λ) − h(0) on the segment h(1) − h(0), summed over prompts,
      averaged over layers (0 at Instruct, 1 at Thinking; ``position_per_layer``); ``off_segment``: the
      distance of h(λ) from that segment point, relative to ‖h(1) − h(0)‖.
    Returns [{lam, cka_instruct, cka_thinking, position, off_segment, *_per_layer}] with λ=0 and 1 added.
    Use >= 256 prompts: CKA over few inputs is biased upwards."""
    grid = sorted({0.0, 1.0, *[float(g) for g in grid]})
    h = pooled_hidden_states(model, tokenizer, prompts, grid)  # [G, L+1, P, H]
    h0, h1 = h[grid.index(0.0)], h[grid.index(1.0)]
    cka_i = linear_cka(h, h0.unsqueeze(0))  # [G, L+1]
    cka_t = linear_cka(h, h1.unsqueeze(0))
    seg = h1 - h0  # [L+1, P, H]
    seg_sq = seg.pow(2).sum((-1, -2)).clamp_min(1e-300)  # [L+1]
    pos = ((h - h0) * seg).sum((-1, -2)) / seg_sq  # [G, L+1]
    resid = (h - h0 - pos[..., None, None] * seg).pow(2).sum((-1, -2)).sqrt() / seg_sq.sqrt()
    rows = []
    for g, lam in enumerate(grid):
        rows.append(
            {
                "lam": lam,
                "cka_instruct": float(cka_i[g].mean()),
                "cka_thinking": float(cka_t[g].mean()),
                "position": float(pos[g].mean()),
                "off_segment": float(resid[g].mean()),
                "cka_instruct_per_layer": [round(float(v), 4) for v in cka_i[g]],
                "cka_thinking_per_layer": [round(float(v), 4) for v in cka_t[g]],
                "position_per_layer": [round(float(v), 4) for v in pos[g]],
            }
        )
    return rows


def table_markdown(table: list[dict], continuity: list[dict] | None = None) -> str:
    """λ, accuracy and mean tokens per grid λ; with `continuity`, the layer-mean CKA against each endpoint
    and the position along the Instruct→Thinking segment too."""
    headers = ["λ", "accuracy", "mean tokens"]
    rows = [[f"{r['lam']:g}", f"{r['accuracy']:.3f}", f"{r['mean_tokens']:.1f}"] for r in table]
    if continuity:
        cos = {c["lam"]: c for c in continuity}
        headers += ["CKA vs Instruct", "CKA vs Thinking", "position (0=I, 1=T)"]
        for row, r in zip(rows, table, strict=True):
            c = cos.get(r["lam"])
            row += (
                [f"{c['cka_instruct']:.3f}", f"{c['cka_thinking']:.3f}", f"{c['position']:.2f}"]
                if c
                else ["-", "-", "-"]
            )
    return markdown_table(headers, rows)


def run_sweep(
    model,
    tokenizer,
    items: list[EvalItem],
    out_dir,
    grid=DEFAULT_GRID,
    continuity_prompts: int = CONTINUITY_PROMPTS,
    meta: dict | None = None,
    **run_kwargs,
) -> dict:
    """The pilot study: writes `sweep_items.jsonl`, `sweep.json`, `sweep.md` and `frontier.png` to
    out_dir and returns {"table", "continuity", "seconds", "records"}. sweep.json records n and the grid,
    plus `meta` (e.g. seed, mix, data file)."""
    out_dir = Path(out_dir)
    records, seconds = sweep_records(model, tokenizer, items, grid, **run_kwargs)
    table = sweep_table(records)
    continuity = representation_continuity(model, tokenizer, [it.prompt for it in items[:continuity_prompts]], grid)
    write_records(out_dir / "sweep_items.jsonl", records)
    info = {"n": len(items), "grid": [float(g) for g in grid], **(meta or {})}
    (out_dir / "sweep.json").write_text(
        json.dumps({**info, "table": table, "continuity": continuity, "seconds": seconds}, indent=1)
    )
    (out_dir / "sweep.md").write_text("# λ sweep\n\n" + table_markdown(table, continuity) + "\n")
    plot_frontier(table, out_dir / "frontier.png", continuity=continuity, title=plot_title(info))
    return {"table": table, "continuity": continuity, "seconds": seconds, "records": records}
