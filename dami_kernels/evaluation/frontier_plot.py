"""The frontier picture: accuracy against mean generated tokens for each fixed λ, the methods' points, λ labels
placed where they cover nothing, and the representation-continuity panel (`plot_frontier`, `plot_report`)."""

from __future__ import annotations

from pathlib import Path


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
PLOTTED_METHODS = (
    "dami_pref",
    "dami_conf",
    "oracle",
    "syntax_rule",
    "random_matched",
    "frontier_matched",
    "text_router_pref",
    "text_router_conf",
)
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
