"""Rollouts of queries on a λ grid: correctness and generated tokens per (query, grid λ).

This is what both estimators are tuned or trained on, and what the fixed-λ frontier and the oracle are
read from. A choice of λ per query is scored by looking up its nearest grid point.

JSONL format (one line per query and grid λ; extra keys are ignored):
    {"id": "q17", "lam": 0.3, "correct": true, "tokens": 12}
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

# Grid λ values read from files are rounded to this many decimals, so that 0.30000000000000004 == 0.3.
LAM_DECIMALS = 6


def check_grid(grid, name: str = "grid") -> list[float]:
    """A λ grid as a list of floats: non-empty, finite, strictly increasing (else ValueError)."""
    grid = [float(g) for g in grid]
    if not grid:
        raise ValueError(f"{name} needs at least one λ value")
    if any(not math.isfinite(x) for x in grid):
        raise ValueError(f"{name} must hold finite λ values, got {grid}")
    if any(b <= a for a, b in itertools.pairwise(grid)):
        raise ValueError(f"{name} must be strictly increasing, got {grid}")
    return grid


def snap_to_grid(lam, grid) -> torch.Tensor:
    """Index of the nearest grid λ for each λ (ties go to the smaller λ). lam [...] -> long [...]."""
    lam = torch.as_tensor(lam, dtype=torch.float64).cpu().contiguous()
    if bool((~torch.isfinite(lam)).any()):
        raise ValueError("lam must be finite")
    g = torch.tensor([float(x) for x in grid], dtype=torch.float64)
    mids = (g[1:] + g[:-1]) / 2  # [G-1]; λ exactly on a midpoint maps to the smaller grid λ
    return torch.bucketize(lam, mids, right=False)


@dataclass
class Rollouts:
    """Outcomes of Q queries on a grid of G λ values.

    ids: Q query ids (unique strings); grid: G increasing λ values;
    correct [Q, G] bool; tokens [Q, G] float64 (generated tokens, ≥ 0).
    """

    ids: list[str]
    grid: list[float]
    correct: torch.Tensor
    tokens: torch.Tensor

    def __post_init__(self):
        self.ids = [str(i) for i in self.ids]
        self.grid = check_grid(self.grid)
        q, g = len(self.ids), len(self.grid)
        if q == 0:
            raise ValueError("ids: rollouts need at least one query")
        if len(set(self.ids)) != q:
            raise ValueError("ids: query ids must be unique")
        if not isinstance(self.correct, torch.Tensor) or self.correct.shape != (q, g):
            raise ValueError(f"correct must be a tensor of shape [Q={q}, G={g}]")
        if not isinstance(self.tokens, torch.Tensor) or self.tokens.shape != (q, g):
            raise ValueError(f"tokens must be a tensor of shape [Q={q}, G={g}]")
        self.correct = self.correct.to(torch.bool).cpu()
        self.tokens = self.tokens.to(torch.float64).cpu()
        if bool((~torch.isfinite(self.tokens) | (self.tokens < 0)).any()):
            raise ValueError("tokens must be finite and non-negative")

    # ----- construction and files -----
    @classmethod
    def from_records(cls, records, id_key: str = "id", lam_key: str = "lam") -> Rollouts:
        """Build from dicts with keys id_key, lam_key, "correct", "tokens"; every (id, λ) exactly once."""
        table: dict[str, dict[float, tuple[bool, float]]] = {}
        lams: set[float] = set()
        for n, rec in enumerate(records):
            for key in (id_key, lam_key, "correct", "tokens"):
                if key not in rec:
                    raise ValueError(f"record {n} has no {key!r} field")
            qid, lam = str(rec[id_key]), round(float(rec[lam_key]), LAM_DECIMALS)
            row = table.setdefault(qid, {})
            if lam in row:
                raise ValueError(f"record {n}: duplicate rollout for id {qid!r} at {lam_key}={lam}")
            if not isinstance(rec["correct"], bool):
                raise ValueError(f"record {n}: 'correct' must be true or false, got {rec['correct']!r}")
            row[lam] = (rec["correct"], float(rec["tokens"]))
            lams.add(lam)
        if not table:
            raise ValueError("records: no rollouts given")
        grid = sorted(lams)
        ids = list(table)
        for qid in ids:
            missing = [g for g in grid if g not in table[qid]]
            if missing:
                raise ValueError(f"id {qid!r} has no rollout at {lam_key} in {missing}")
        correct = torch.tensor([[table[q][g][0] for g in grid] for q in ids], dtype=torch.bool)
        tokens = torch.tensor([[table[q][g][1] for g in grid] for q in ids], dtype=torch.float64)
        return cls(ids, grid, correct, tokens)

    @classmethod
    def from_jsonl(cls, path, id_key: str = "id", lam_key: str = "lam") -> Rollouts:
        """Read a JSONL file (see the module docstring)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"rollouts file not found: {path}")
        records = []
        with path.open() as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        return cls.from_records(records, id_key=id_key, lam_key=lam_key)

    def to_records(self) -> list[dict]:
        return [
            {"id": q, "lam": lam, "correct": bool(self.correct[i, j]), "tokens": float(self.tokens[i, j])}
            for i, q in enumerate(self.ids)
            for j, lam in enumerate(self.grid)
        ]

    def to_jsonl(self, path) -> None:
        with Path(path).open("w") as f:
            for rec in self.to_records():
                f.write(json.dumps(rec) + "\n")

    def select(self, ids) -> Rollouts:
        """The rollouts of the given query ids, in that order (e.g. a train split)."""
        index = {q: i for i, q in enumerate(self.ids)}
        missing = [str(q) for q in ids if str(q) not in index]
        if missing:
            raise ValueError(f"ids not in the rollouts: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        rows = torch.tensor([index[str(q)] for q in ids], dtype=torch.long)
        return Rollouts([str(q) for q in ids], self.grid, self.correct[rows], self.tokens[rows])

    # ----- scoring a choice of λ -----
    @property
    def grid_tensor(self) -> torch.Tensor:
        return torch.tensor(self.grid, dtype=torch.float64)

    def snap(self, lam) -> torch.Tensor:
        """Index of the nearest grid point for each λ (ties go to the smaller λ). lam [...] -> long [...]."""
        return snap_to_grid(lam, self.grid)

    def evaluate_many(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score C candidate choices at once. lam [C, Q] (λ per query, in `ids` order) ->
        (accuracy [C], mean_tokens [C]), each query scored at its nearest grid point."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        if lam.dim() != 2 or lam.shape[1] != len(self.ids):
            raise ValueError(f"lam must have shape [C, Q={len(self.ids)}], got {tuple(lam.shape)}")
        idx = self.snap(lam)  # [C, Q]
        rows = torch.arange(len(self.ids)).expand_as(idx)
        acc = self.correct[rows, idx].to(torch.float64).mean(dim=1)
        tok = self.tokens[rows, idx].mean(dim=1)
        return acc, tok

    def evaluate(self, lam) -> dict:
        """Accuracy, mean tokens and mean (snapped) λ of one choice. lam: [Q] tensor in `ids` order,
        a float (the same λ for every query) or a dict id -> λ."""
        if isinstance(lam, dict):
            missing = [q for q in self.ids if q not in lam]
            if missing:
                raise ValueError(f"lam has no value for ids {missing[:5]}")
            lam = torch.tensor([float(lam[q]) for q in self.ids], dtype=torch.float64)
        lam = torch.as_tensor(lam, dtype=torch.float64)
        if lam.dim() == 0:
            lam = lam.expand(len(self.ids))
        if lam.shape != (len(self.ids),):
            raise ValueError(f"lam must have shape [Q={len(self.ids)}], got {tuple(lam.shape)}")
        acc, tok = self.evaluate_many(lam.unsqueeze(0))
        mean_lam = self.grid_tensor[self.snap(lam)].mean()
        return {"accuracy": float(acc[0]), "mean_tokens": float(tok[0]), "mean_lam": float(mean_lam)}

    # ----- references: fixed λ and the oracle -----
    def frontier(self) -> list[dict]:
        """The fixed-λ sweep: one row {"lam", "accuracy", "mean_tokens"} per grid λ, in grid order."""
        acc = self.correct.to(torch.float64).mean(dim=0)
        tok = self.tokens.mean(dim=0)
        return [
            {"lam": lam, "accuracy": float(acc[j]), "mean_tokens": float(tok[j])} for j, lam in enumerate(self.grid)
        ]

    def frontier_accuracy(self, mean_tokens: float) -> float:
        """The fixed-λ frontier's accuracy at a token budget, by linear interpolation.

        The frontier is the Pareto set of the sweep's (mean_tokens, accuracy) points (no other point has
        fewer or equal tokens and higher accuracy), sorted by tokens. Between two of its points accuracy is
        interpolated linearly in tokens; below the cheapest point it is that point's accuracy, above the
        most expensive it is the best accuracy. A method "lies above the frontier" when its accuracy
        exceeds this value at its own mean tokens.
        """
        if not math.isfinite(float(mean_tokens)):
            raise ValueError(f"mean_tokens must be finite, got {mean_tokens}")
        pts = sorted((r["mean_tokens"], -r["accuracy"]) for r in self.frontier())
        pareto: list[tuple[float, float]] = []
        for tok, neg_acc in pts:
            if not pareto or -neg_acc > pareto[-1][1]:
                pareto.append((tok, -neg_acc))
        x = float(mean_tokens)
        if x <= pareto[0][0]:
            return pareto[0][1]
        for (t0, a0), (t1, a1) in itertools.pairwise(pareto):
            if x <= t1:
                return a0 + (a1 - a0) * (x - t0) / (t1 - t0)
        return pareto[-1][1]

    def oracle_index(self) -> torch.Tensor:
        """The oracle's grid index per query [Q] (long): the cheapest correct λ.

        Among the grid points where the query is answered correctly, the one with the fewest tokens
        (ties -> the smaller λ). If no grid point is correct, the grid point with the fewest tokens (ties
        -> the smaller λ): the oracle cannot be right there, so it spends as little as possible.
        """
        inf = torch.tensor(float("inf"), dtype=torch.float64)
        any_correct = self.correct.any(dim=1, keepdim=True)
        cost = torch.where(self.correct | ~any_correct, self.tokens, inf)  # [Q, G]
        return cost.argmin(dim=1)  # first minimum = smaller λ on ties

    def oracle_lam(self) -> torch.Tensor:
        """The oracle's λ per query [Q] (float64)."""
        return self.grid_tensor[self.oracle_index()]
