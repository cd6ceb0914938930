"""Markdown tables of measured results, printed by the `dami` commands and written into their reports."""

from __future__ import annotations


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; cells are written with str()."""
    if any(len(row) != len(headers) for row in rows):
        raise ValueError(f"every row needs {len(headers)} cells (one per header)")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(summary: dict) -> str:
    """One row: n, accuracy, mean tokens, mean λ and, when timed, tokens/s and seconds (`runner.summarize`)."""
    headers = ["n", "accuracy", "mean tokens", "mean λ"]
    row = [summary["n"], f"{summary['accuracy']:.3f}", f"{summary['mean_tokens']:.1f}", f"{summary['mean_lam']:.3f}"]
    if "seconds" in summary:
        headers += ["tokens/s", "seconds"]
        row += [f"{summary['tokens_per_s']:.1f}", f"{summary['seconds']:.1f}"]
    return markdown_table(headers, [row])
