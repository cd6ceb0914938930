"""The pilot study: a fixed-λ sweep (accuracy and tokens per λ), its frontier plot, and the
representation continuity between θ(λ) and the two endpoints (per-layer linear CKA and the position of
the hidden states along the segment between the endpoints')."""
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

CONTINUITY_PROMPTS = 256  # prompts for the CKA panel: CKA over few inputs is biased upwards


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
        chunk = rows[s:s + batch_size]
        ids, mask = left_pad([e for _, e in chunk], pad_token_id(tokenizer), device)
        lam = torch.tensor([g for g, _ in chunk], dtype=torch.float32)
        with lambda_scope(model, lam):
            hs = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                       output_hidden_states=True).hidden_states
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
        rows.append({"lam": lam, "cka_instruct": float(cka_i[g].mean()), "cka_thinking": float(cka_t[g].mean()),
                     "position": float(pos[g].mean()), "off_segment": float(resid[g].mean()),
                     "cka_instruct_per_layer": [round(float(v), 4) for v in cka_i[g]],
                     "cka_thinking_per_layer": [round(float(v), 4) for v in cka_t[g]],
                     "position_per_layer": [round(float(v), 4) for v in pos[g]]})
    return rows


def plot_title(info: dict) -> str:
    """"n=1000, seed=0, mix=1:1:1:1, ..." from the run's metadata (the keys it has)."""
    parts = []
    for key in ("n", "seed", "mix", "split", "data", "estimators"):
        if info.get(key) is not None:
            v = info[key]
            parts.append(f"{key}={':'.join(str(x) for x in v) if isinstance(v, (list, tuple)) else v}")
    return ", ".join(parts)


def _lam_label(lams: list[float]) -> str:
    """One label for a run of grid points that coincide on the plot: "λ=0.3", "λ=0.7–1 (1: Thinking)"."""
    names = {0.0: "Instruct", 1.0: "Thinking"}
    text = f"λ={lams[0]:g}" if len(lams) == 1 else f"λ={lams[0]:g}–{lams[-1]:g}"
    ends = [f"{lam:g}: {names[float(lam)]}" for lam in (lams[0], lams[-1]) if float(lam) in names]
    if len(lams) == 1 and ends:
        return f"{text} ({names[float(lams[0])]})"
    return f"{text} ({', '.join(dict.fromkeys(ends))})" if ends else text


def _near(xs: list[float], ys: list[float], tol: float):
    """Whether two plotted points nearly coincide: within ``tol`` of each axis' span (a 0 span counts as 1)."""
    span_x = (max(xs) - min(xs)) or 1.0
    span_y = (max(ys) - min(ys)) or 1.0
    return lambda a, b: abs(a[0] - b[0]) < tol * span_x and abs(a[1] - b[1]) < tol * span_y


def label_groups(xs: list[float], ys: list[float], tol: float = 0.03) -> list[list[int]]:
    """Runs of consecutive points that nearly coincide (within ``tol`` of each axis' span): one label each."""
    near = _near(xs, ys, tol)
    groups: list[list[int]] = []
    for k, point in enumerate(zip(xs, ys)):
        if groups and near(point, (xs[groups[-1][0]], ys[groups[-1][0]])):
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def label_stack(xs: list[float], ys: list[float], groups: list[list[int]], tol: float = 0.03) -> list[int]:
    """For each label group, how many earlier groups' points nearly coincide with its own (a sweep that
    turns back, e.g. λ = 0.5 and 0.9 on the same spot): that label is written that many lines lower."""
    near = _near(xs, ys, tol)
    anchors = [(xs[g[0]], ys[g[0]]) for g in groups]
    return [sum(near(a, b) for b in anchors[:k]) for k, a in enumerate(anchors)]


def label_side(point: tuple[float, float], width: float, markers: list[tuple[float, float]],
                height: float = 0.06) -> int:
    """Where a right-aligned label that runs ``width`` leftwards from ``point`` goes: -1 below the point,
    +1 above it. Below, unless more method ``markers`` fall in the box below than in the box above (all
    in axes fractions, 0-1; each box ``height`` tall)."""
    x, y = point

    def count(lo: float, hi: float) -> int:
        return sum(x - width <= mx <= x + 0.01 and lo <= my <= hi for mx, my in markers)

    return -1 if count(y - height, y) <= count(y, y + height) else 1


def plot_frontier(table: list[dict], path: Path, methods: dict | None = None,
                  continuity: list[dict] | None = None, title: str | None = None) -> None:
    """PNG: accuracy against mean generated tokens for each fixed λ (λ=0 and 1 labelled Instruct and
    Thinking), plus optional method points {name: {accuracy, mean_tokens}} (hollow markers of different
    sizes so that coinciding points stay visible); a second panel with the representation continuity
    (layer-mean CKA against each endpoint and the position along the segment). `title`: the run (n, seed,
    mix, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if continuity else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 5.2), squeeze=False)
    ax = axes[0][0]
    xs = [r["mean_tokens"] for r in table]
    ys = [r["accuracy"] for r in table]
    ax.plot(xs, ys, "-o", color="tab:blue", label="fixed λ", zorder=2)
    span_x = (max(xs) - min(xs)) or 1.0
    pad_x = 0.08 * span_x
    x_lim = (min(xs) - pad_x, max(xs) + pad_x)
    lo_y = min(ys + [m["accuracy"] for m in (methods or {}).values()])
    hi_y = max(ys + [m["accuracy"] for m in (methods or {}).values()])
    pad_y = 0.08 * ((hi_y - lo_y) or 1.0)
    y_lim = (lo_y - 2 * pad_y, hi_y + 2 * pad_y)
    ax.set_xlim(*x_lim)
    ax.set_ylim(*y_lim)

    def frac(x: float, y: float) -> tuple[float, float]:  # data -> axes fractions
        return (x - x_lim[0]) / (x_lim[1] - x_lim[0]), (y - y_lim[0]) / (y_lim[1] - y_lim[0])

    # One label per run of coinciding points, written beside the point at its own height (left part of
    # the axes) or right-aligned under or over it (right part: the side clear of the method markers, which
    # sit near Thinking), so that no label drifts towards a neighbour; a point on the spot of an earlier
    # one gets its label lower.
    markers = [frac(m["mean_tokens"], m["accuracy"]) for m in (methods or {}).values()]
    groups = label_groups(xs, ys)
    for group, stacked in zip(groups, label_stack(xs, ys, groups)):
        x, y = xs[group[0]], ys[group[0]]
        text = _lam_label([table[k]["lam"] for k in group])
        ha = "left" if x < min(xs) + 0.7 * span_x else "right"
        dy = -10 * stacked
        if ha == "right":  # about 0.0075 of the axes' width per character at fontsize 7
            dy += 9 * label_side(frac(x, y), 0.0075 * len(text) + 0.02, markers)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(7, dy) if ha == "left" else (-9, dy),
                    fontsize=7, ha=ha, va="center", annotation_clip=True)
    styles = [("*", 260), ("D", 110), ("s", 70), ("^", 70), ("v", 70), ("P", 70), ("X", 70), ("o", 70)]
    for k, ((name, res), (marker, size)) in enumerate(zip((methods or {}).items(), styles)):
        ax.scatter([res["mean_tokens"]], [res["accuracy"]], marker=marker, s=size, zorder=4,
                   facecolors="none", edgecolors=f"C{k + 1}", linewidths=1.6, label=name)
    ax.set_xlabel("mean generated tokens per query")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs. tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")   # where it covers the fewest points (the sweep need not be monotone)
    if continuity:
        ax2 = axes[0][1]
        lams = [r["lam"] for r in continuity]
        ax2.plot(lams, [r["cka_instruct"] for r in continuity], "-o", label="CKA vs Instruct (layer mean)")
        ax2.plot(lams, [r["cka_thinking"] for r in continuity], "-s", label="CKA vs Thinking (layer mean)")
        ax2.plot(lams, [r["position"] for r in continuity], "--^", label="position on segment I→T")
        ax2.plot([0, 1], [0, 1], ":", color="gray", linewidth=1)
        ax2.set_xlabel("λ")
        ax2.set_ylabel("CKA / position")
        ax2.set_title("representation continuity")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table_markdown(table: list[dict], continuity: list[dict] | None = None) -> str:
    """λ, accuracy and mean tokens per grid λ; with `continuity`, the layer-mean CKA against each endpoint
    and the position along the Instruct→Thinking segment too."""
    headers = ["λ", "accuracy", "mean tokens"]
    rows = [[f"{r['lam']:g}", f"{r['accuracy']:.3f}", f"{r['mean_tokens']:.1f}"] for r in table]
    if continuity:
        cos = {c["lam"]: c for c in continuity}
        headers += ["CKA vs Instruct", "CKA vs Thinking", "position (0=I, 1=T)"]
        for row, r in zip(rows, table):
            c = cos.get(r["lam"])
            row += ([f"{c['cka_instruct']:.3f}", f"{c['cka_thinking']:.3f}", f"{c['position']:.2f}"] if c
                    else ["-", "-", "-"])
    return markdown_table(headers, rows)


def run_sweep(model, tokenizer, items: list[EvalItem], out_dir, grid=DEFAULT_GRID,
              continuity_prompts: int = CONTINUITY_PROMPTS, meta: dict | None = None, **run_kwargs) -> dict:
    """The pilot study: writes `sweep_items.jsonl`, `sweep.json`, `sweep.md` and `frontier.png` to
    out_dir and returns {"table", "continuity", "seconds", "records"}. sweep.json records n and the grid,
    plus `meta` (e.g. seed, mix, data file)."""
    out_dir = Path(out_dir)
    records, seconds = sweep_records(model, tokenizer, items, grid, **run_kwargs)
    table = sweep_table(records)
    continuity = representation_continuity(
        model, tokenizer, [it.prompt for it in items[:continuity_prompts]], grid)
    write_records(out_dir / "sweep_items.jsonl", records)
    info = {"n": len(items), "grid": [float(g) for g in grid], **(meta or {})}
    (out_dir / "sweep.json").write_text(json.dumps(
        {**info, "table": table, "continuity": continuity, "seconds": seconds}, indent=1))
    (out_dir / "sweep.md").write_text("# λ sweep\n\n" + table_markdown(table, continuity) + "\n")
    plot_frontier(table, out_dir / "frontier.png", continuity=continuity, title=plot_title(info))
    return {"table": table, "continuity": continuity, "seconds": seconds, "records": records}
