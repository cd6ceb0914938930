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


def plot_title(info: dict) -> str:
    """ "n=1000, seed=0, mix=1:1:1:1, ..." from the run's metadata (the keys it has)."""
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
    for k, point in enumerate(zip(xs, ys, strict=True)):
        if groups and near(point, (xs[groups[-1][0]], ys[groups[-1][0]])):
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


# Methods the demo's plot shows (every one gets its own marker and legend entry); Thinking and Instruct are
# the fixed-λ curve's endpoints (λ = 1 and 0) and are labelled there.
PLOTTED_METHODS = ("dami_pref", "dami_conf", "oracle", "syntax_rule", "random_matched", "frontier_matched")
# Hollow markers, one shape and one size each (largest first, so that markers on one spot nest visibly).
METHOD_STYLES = [("*", 330), ("D", 150), ("s", 110), ("^", 80), ("v", 60), ("o", 42), ("P", 34), ("X", 28)]
LABEL_GID = "frontier_label"


def _label_candidates():
    """(dx, dy, ha, va) offsets in points from the labelled point, nearest first: right, left, below,
    above, then the diagonals; further out (with a leader line) in 16 directions when none of those fit."""
    import math

    out = []
    for r in (7, 13, 20, 30, 42, 56, 72, 90):
        n = 8 if r < 20 else 16
        for k in range(n):
            a = 2 * math.pi * k / n
            dx, dy = r * math.cos(a), r * math.sin(a)
            ha = "left" if dx > 0.3 * r else ("right" if dx < -0.3 * r else "center")
            va = "bottom" if dy > 0.3 * r else ("top" if dy < -0.3 * r else "center")
            out.append((round(dx, 2), round(dy, 2), ha, va))
    order = {(1, 0): 0, (-1, 0): 1, (0, -1): 2, (0, 1): 3}

    def rank(c):
        dx, dy, _, _ = c
        r = math.hypot(dx, dy)
        key = (round(dx / r), round(dy / r)) if abs(dx) < 1e-6 or abs(dy) < 1e-6 else None
        return (r, order.get(key, 4))

    return sorted(out, key=rank)


def _overlap(a, b) -> float:
    """Area shared by two display-space boxes (x0, y0, x1, y1)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _box(extent, pad: float = 0.0):
    return (extent.x0 - pad, extent.y0 - pad, extent.x1 + pad, extent.y1 + pad)


def frontier_point_boxes(ax, renderer) -> list[tuple[float, float, float, float]]:
    """Display-space boxes of every plotted marker on ``ax`` (line markers and scatter points)."""
    px = renderer.points_to_pixels(1.0)
    boxes = []
    for line in ax.get_lines():
        if line.get_marker() in (None, "None", "", " "):
            continue
        r = line.get_markersize() / 2 * px
        for x, y in line.get_transform().transform(line.get_xydata()):
            boxes.append((x - r, y - r, x + r, y + r))
    for coll in ax.collections:
        sizes = coll.get_sizes()
        offsets = coll.get_offset_transform().transform(coll.get_offsets())
        for k, (x, y) in enumerate(offsets):
            r = (sizes[k % len(sizes)] ** 0.5) / 2 * px if len(sizes) else 3 * px
            boxes.append((x - r, y - r, x + r, y + r))
    return boxes


def place_labels(ax, labels: list, renderer, owned: list | None = None) -> None:
    """Move each annotation in ``labels`` (anchored on a plotted point, offset in points) to the first
    candidate offset (`_label_candidates`) whose box stays inside the axes and overlaps no plotted marker,
    no label placed before it and not the legend; failing that, to the candidate with the least overlap.
    A candidate nearer another point than its own (``owned[k]``: the data points label k names, default
    its anchor) is taken only when no unambiguous one fits. Labels placed far from their point get a thin
    leader line."""
    pad = renderer.points_to_pixels(1.0)
    points = frontier_point_boxes(ax, renderer)
    frame = _box(ax.get_window_extent(renderer))
    legend = ax.get_legend()
    fixed = [_box(legend.get_window_extent(renderer), pad)] if legend is not None else []
    placed: list = []
    candidates = _label_candidates()

    def gap(b, c) -> float:  # distance from box b to a point c (display coordinates)
        return (max(b[0] - c[0], 0.0, c[0] - b[2]) ** 2 + max(b[1] - c[1], 0.0, c[1] - b[3]) ** 2) ** 0.5

    centres = [((p[0] + p[2]) / 2, (p[1] + p[3]) / 2) for p in points]
    for k, ann in enumerate(labels):
        mine = ax.transData.transform(owned[k] if owned else [ann.xy])
        others = [c for c in centres if min(abs(c[0] - m[0]) + abs(c[1] - m[1]) for m in mine) > 0.5]
        best = None  # (cost, ambiguous, dx, dy, ha, va, box): no overlap and nearest to its own point wins
        for dx, dy, ha, va in candidates:
            ann.xyann = (dx, dy)
            ann.set_ha(ha)
            ann.set_va(va)
            b = _box(ann.get_window_extent(renderer), pad)
            outside = (
                max(0.0, frame[0] - b[0])
                + max(0.0, b[2] - frame[2])
                + max(0.0, frame[1] - b[1])
                + max(0.0, b[3] - frame[3])
            )
            cost = sum(_overlap(b, o) for o in points + placed + fixed) + 1e3 * outside
            ambiguous = any(gap(b, c) < min(gap(b, m) for m in mine) - pad for c in others)
            if best is None or (cost, ambiguous) < best[:2]:
                best = (cost, ambiguous, dx, dy, ha, va, b)
            if cost == 0 and not ambiguous:
                break
        _, _, dx, dy, ha, va, b = best
        ann.xyann = (dx, dy)
        ann.set_ha(ha)
        ann.set_va(va)
        if (dx * dx + dy * dy) ** 0.5 > 16:  # a leader line (its own artist: the label's box stays the text's)
            ax.annotate(
                "",
                ann.xy,
                xytext=(dx, dy),
                textcoords="offset points",
                zorder=1,
                arrowprops={"arrowstyle": "-", "color": "0.4", "linewidth": 0.7, "shrinkA": 2, "shrinkB": 4},
            )
        placed.append(b)


def frontier_figure(
    table: list[dict],
    methods: dict | None = None,
    continuity: list[dict] | None = None,
    title: str | None = None,
    dpi: int = 120,
):
    """The figure `plot_frontier` saves: returns (fig, ax, labels) with the λ labels already placed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = methods or {}
    if len(methods) > len(METHOD_STYLES):
        raise ValueError(f"at most {len(METHOD_STYLES)} methods can be plotted, got {len(methods)}")
    panels = 2 if continuity else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 5.2), squeeze=False, dpi=dpi)
    ax = axes[0][0]
    xs = [r["mean_tokens"] for r in table]
    ys = [r["accuracy"] for r in table]
    ax.plot(xs, ys, "-o", color="tab:blue", label="fixed λ", zorder=2)
    all_x = xs + [m["mean_tokens"] for m in methods.values()]
    all_y = ys + [m["accuracy"] for m in methods.values()]
    span_x = (max(all_x) - min(all_x)) or 1.0
    span_y = (max(all_y) - min(all_y)) or 1.0
    ax.set_xlim(min(all_x) - 0.1 * span_x, max(all_x) + 0.1 * span_x)
    ax.set_ylim(min(all_y) - 0.16 * span_y, max(all_y) + 0.16 * span_y)
    for k, ((name, res), (marker, size)) in enumerate(zip(methods.items(), METHOD_STYLES, strict=False)):
        ax.scatter(
            [res["mean_tokens"]],
            [res["accuracy"]],
            marker=marker,
            s=size,
            zorder=4,
            facecolors="none",
            edgecolors=f"C{k + 1}",
            linewidths=1.4,
            label=name,
        )
    ax.set_xlabel("mean generated tokens per query")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs. tokens")
    ax.grid(alpha=0.3)
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
    # One label per run of consecutive, nearly coinciding grid points (names the endpoints).
    labels, owned = [], []
    for group in label_groups(xs, ys):
        owned.append([(xs[k], ys[k]) for k in group])
        x, y = xs[group[0]], ys[group[0]]
        labels.append(
            ax.annotate(
                _lam_label([table[k]["lam"] for k in group]),
                (x, y),
                textcoords="offset points",
                xytext=(7, 0),
                fontsize=7,
                ha="left",
                va="center",
                annotation_clip=False,
                gid=LABEL_GID,
                zorder=5,
            )
        )
    # Layout first (it moves the axes), then fix the legend where it covers the fewest points, then place
    # the labels around the points, the markers, each other and the legend (display coordinates).
    fig.tight_layout()
    legend = ax.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    lb = legend.get_window_extent(renderer)
    legend.set_loc(((lb.x0 - frame.x0) / frame.width, (lb.y0 - frame.y0) / frame.height))
    place_labels(ax, labels, renderer, owned)
    return fig, ax, labels


def plot_frontier(
    table: list[dict],
    path: Path,
    methods: dict | None = None,
    continuity: list[dict] | None = None,
    title: str | None = None,
) -> None:
    """PNG: accuracy against mean generated tokens for each fixed λ (λ=0 and 1 labelled Instruct and
    Thinking), plus optional method points {name: {accuracy, mean_tokens}} (hollow markers, each its own
    shape and size so that coinciding points stay visible, each in the legend); λ labels placed where
    they cover no point, no marker, no other label and not the legend; a second panel with the
    representation continuity (layer-mean CKA against each endpoint and the position along the
    segment). `title`: the run (n, seed, mix, ...)."""
    import matplotlib.pyplot as plt

    fig, _, _ = frontier_figure(table, methods, continuity, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi)
    plt.close(fig)


def plot_report(
    report: dict, path: Path, continuity: list[dict] | None = None, title: str | None = None, methods=PLOTTED_METHODS
) -> None:
    """`plot_frontier` from a demo's report.json dict (its "sweep" and "methods"): the demo's frontier.png
    can be redrawn from a shipped report without rerunning the study (continuity: details.json's)."""
    shown = {k: report["methods"][k] for k in methods if k in report["methods"]}
    plot_frontier(report["sweep"], path, methods=shown, continuity=continuity, title=title)


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
