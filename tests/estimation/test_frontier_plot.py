"""The frontier plot (demo and sweep): every plotted method has a legend entry, and no λ label covers
another label, a plotted point (the fixed-λ points and the method markers) or the legend: checked on the
label boxes as drawn (Agg, display coordinates), for the shipped testbed reports and for random
frontiers."""

import json
import random
from pathlib import Path

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")  # before pyplot is imported: the imports below must follow it
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from dami_kernels.evaluation.frontier_plot import (  # noqa: E402
    LABEL_GID,
    PLOTTED_METHODS,
    frontier_figure,
    frontier_point_boxes,
    plot_report,
)

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "cpu" / "testbed_v5"
REPORTS = sorted(RESULTS.glob("report_seed*.json"))
GRID = [round(0.1 * k, 1) for k in range(11)]


def _overlap(a, b) -> bool:
    return min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)


def _contains(box, point) -> bool:
    return box.x0 <= point[0] <= box.x1 and box.y0 <= point[1] <= box.y1


def check_figure(table, methods, continuity=None):
    """Draws the frontier figure and asserts the label / point / legend geometry; returns the labels."""
    fig, ax, labels = frontier_figure(table, methods, continuity, title="t")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        drawn = [t for t in ax.texts if t.get_gid() == LABEL_GID]
        assert drawn == labels and labels
        # the text box only (an Annotation's own extent would include a leader line, which is separate here)
        boxes = [Text.get_window_extent(t, renderer) for t in labels]
        names = [t.get_text() for t in labels]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                assert not _overlap(boxes[i], boxes[j]), (names[i], names[j])
        # every plotted point: the fixed-λ markers and the method markers (centres and marker boxes)
        xy = ax.get_lines()[0].get_transform().transform(ax.get_lines()[0].get_xydata())
        centres = [tuple(p) for p in xy]
        for coll in ax.collections:
            centres += [tuple(p) for p in coll.get_offset_transform().transform(coll.get_offsets())]
        assert len(centres) == len(table) + len(methods)
        marker_boxes = frontier_point_boxes(ax, renderer)
        legend = ax.get_legend().get_window_extent(renderer)
        frame = ax.get_window_extent(renderer)
        for name, box in zip(names, boxes, strict=True):
            assert not any(_contains(box, c) for c in centres), name
            assert not any(_overlap(box, type(box).from_extents(*m)) for m in marker_boxes), name
            assert not _overlap(box, legend), name
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, name
        # every plotted method in the legend (and the fixed-λ curve), each with its own marker shape/size
        entries = [t.get_text() for t in ax.get_legend().get_texts()]
        assert entries == ["fixed λ", *methods]
        styles = [(c.get_paths()[0].vertices.tobytes(), float(c.get_sizes()[0])) for c in ax.collections]
        assert len(set(styles)) == len(styles) == len(methods)
        return names
    finally:
        plt.close(fig)


@pytest.mark.parametrize("report_path", REPORTS, ids=[p.stem for p in REPORTS])
def test_shipped_reports(report_path):
    """The demo's plot of each shipped report (n = 1000): frontier_matched included, nothing covered."""
    report = json.loads(report_path.read_text())
    shown = {k: report["methods"][k] for k in PLOTTED_METHODS}
    assert "frontier_matched" in shown
    names = check_figure(report["sweep"], shown)
    assert any("Thinking" in n for n in names) and any("Instruct" in n for n in names)


def test_shipped_report_small_n_and_sweep_only():
    """Coarser numbers (n = 100: accuracies on a 0.01 grid, so more coinciding points) and the sweep's
    plot (no methods)."""
    report = json.loads(REPORTS[0].read_text())
    coarse = [
        {**r, "accuracy": round(r["accuracy"], 2), "mean_tokens": round(r["mean_tokens"], 1)} for r in report["sweep"]
    ]
    methods = {
        k: {
            "accuracy": round(report["methods"][k]["accuracy"], 2),
            "mean_tokens": round(report["methods"][k]["mean_tokens"], 1),
        }
        for k in PLOTTED_METHODS
    }
    check_figure(coarse, methods)
    check_figure(report["sweep"], {})


@pytest.mark.parametrize("seed", range(6))
def test_random_frontiers(seed):
    """Seeded random frontiers: a noisy increasing sweep (some seeds with a run of coinciding points and
    a turn back) and method points scattered around it, some on one spot."""
    rng = random.Random(seed)
    table, acc, tok = [], rng.uniform(0.0, 0.6), rng.uniform(2, 10)
    for lam in GRID:
        if lam > 0 and rng.random() < 0.3:  # coincides with the previous point
            acc, tok = acc + rng.uniform(-0.003, 0.003), tok + rng.uniform(0, 0.05)
        else:
            acc = min(1.0, max(0.0, acc + rng.uniform(-0.15, 0.2)))
            tok = max(0.0, tok + rng.uniform(-5, 15))
        table.append({"lam": lam, "accuracy": round(acc, 3), "mean_tokens": round(tok, 3)})
    xs = [r["mean_tokens"] for r in table]
    ys = [r["accuracy"] for r in table]
    methods = {}
    anchor = (rng.uniform(min(xs), max(xs)), rng.uniform(min(ys), max(ys)))
    for k, name in enumerate(PLOTTED_METHODS):
        if k and rng.random() < 0.4:  # on (nearly) the same spot as another method
            x, y = anchor[0] + rng.uniform(-0.1, 0.1), anchor[1] + rng.uniform(-0.002, 0.002)
        else:
            x, y = rng.uniform(min(xs), max(xs)), rng.uniform(min(ys), max(ys))
            anchor = (x, y)
        methods[name] = {"accuracy": y, "mean_tokens": x}
    check_figure(table, methods)


def test_fully_random_points():
    """Uniformly random points (no frontier shape at all), several seeds."""
    for seed in range(100, 104):
        rng = random.Random(seed)
        table = [{"lam": lam, "accuracy": rng.random(), "mean_tokens": rng.uniform(0, 60)} for lam in GRID]
        methods = {k: {"accuracy": rng.random(), "mean_tokens": rng.uniform(0, 60)} for k in PLOTTED_METHODS}
        check_figure(table, methods)


def test_plot_report_writes_png(tmp_path):
    """plot_report redraws a demo's frontier.png from its report.json (and details.json's continuity)."""
    report = json.loads(REPORTS[0].read_text())
    plot_report(
        report,
        tmp_path / "f.png",
        continuity=[{"lam": g, "cka_instruct": 1 - g, "cka_thinking": g, "position": g} for g in GRID],
        title="t",
    )
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
