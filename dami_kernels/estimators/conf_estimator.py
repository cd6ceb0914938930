"""DAMI-Conf, the zero-shot estimator: λ(q) from System 1's confidence c(q) ∈ [0, 1] and the endpoints'
discrepancy d(q) ∈ [0, ln 2] (measured by `conf.py`); its mapping, tuning on rollouts, and config file.

Mapping (three hyperparameters w ∈ [0, 1], τ, T > 0):
    s(q) = w · d(q) / ln 2 + (1 − w) · (1 − c(q))      difficulty score ∈ [0, 1]
    λ(q) = σ( (s(q) − τ) / T )                          ∈ (0, 1)
λ rises with the discrepancy (∂λ/∂d = σ'·w/(T ln 2) ≥ 0) and falls with the confidence
(∂λ/∂c = −σ'·(1−w)/T ≤ 0). Both signals are normalised to [0, 1], so w is a plain mixing weight; τ is the
difficulty at which λ = 0.5, the middle of the sweep's transition; T is the width of the switch (small T
routes each query to one end, larger T spreads queries over the transition). When tuned on rollouts,
the estimator remembers their λ grid and snaps each λ(q) to its nearest grid point, so the λ it runs at
is one whose accuracy and cost were measured.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from dami_kernels.estimators.conf import AUTO, ConfSignals, conf_signals
from dami_kernels.estimators.rollouts import Rollouts, check_grid, snap_to_grid
from dami_kernels.estimators.signals import LN2
from dami_kernels.validation import is_number, positive_int


def conf_lambda(c: torch.Tensor, d: torch.Tensor, w: float, tau: float, temperature: float) -> torch.Tensor:
    """λ = σ((w·d/ln 2 + (1−w)·(1−c) − τ) / T). c, d [...] -> λ [...] (float64), in [0, 1].

    Broadcasts, so hyperparameters given as tensors [C, 1] score C candidates on [Q] signals at once.
    """
    c, d = torch.as_tensor(c, dtype=torch.float64), torch.as_tensor(d, dtype=torch.float64)
    w, tau, temp = (torch.as_tensor(x, dtype=torch.float64) for x in (w, tau, temperature))
    score = w * (d / LN2) + (1 - w) * (1 - c)
    return torch.sigmoid((score - tau) / temp).clamp(0.0, 1.0)


DEFAULT_TUNE_GRID = {
    "w": [round(0.1 * i, 1) for i in range(11)],
    "tau": [round(0.025 * i, 3) for i in range(41)],
    "temperature": [0.01, 0.03, 0.1, 0.3],
}
OBJECTIVES = ("constrained", "penalty")


@dataclass
class DamiConf:
    """DAMI-Conf hyperparameters and signal settings (see the module docstring for the formula).

    w ∈ [0, 1]: weight of the discrepancy against (1 − confidence); tau: the score at which λ = 0.5;
    temperature > 0: the width of the switch. max_answer_tokens and think_prefix fix how the signals are
    measured (tuning and inference must measure them the same way). lam_grid: if set (by `tune`), λ(q)
    is snapped to its nearest grid value (ties -> smaller λ). tuned: what `tune` chose and measured.
    """

    w: float = 0.5
    tau: float = 0.5
    temperature: float = 0.1
    max_answer_tokens: int = 8
    think_prefix: str = AUTO
    lam_grid: list[float] | None = None
    tuned: dict | None = field(default=None, compare=False)

    def __post_init__(self):
        for name in ("w", "tau", "temperature"):
            v = getattr(self, name)
            if not is_number(v) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            setattr(self, name, float(v))
        if not 0.0 <= self.w <= 1.0:
            raise ValueError(f"w must be in [0, 1], got {self.w}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        positive_int(self.max_answer_tokens, "max_answer_tokens")
        if not isinstance(self.think_prefix, str):
            raise ValueError(f"think_prefix must be a string, got {self.think_prefix!r}")
        if self.lam_grid is not None:
            self.lam_grid = check_grid(self.lam_grid, "lam_grid")

    # ----- prediction -----
    def lam_from_signals(self, signals: ConfSignals) -> torch.Tensor:
        """λ per query [Q] (float32): the mapping, snapped to lam_grid when one is set."""
        lam = conf_lambda(signals.confidence, signals.discrepancy, self.w, self.tau, self.temperature)
        if self.lam_grid is not None:
            grid = torch.tensor(self.lam_grid, dtype=torch.float64)
            lam = grid[snap_to_grid(lam, self.lam_grid)]
        return lam.to(torch.float32)

    def predict(
        self, model, tokenizer, prompts, batch_size: int = 32, progress: bool = True, chat_template: bool | None = None
    ) -> torch.Tensor:
        """λ(q) for each prompt: [B] float32 on CPU."""
        signals = conf_signals(
            model,
            tokenizer,
            prompts,
            self.max_answer_tokens,
            self.think_prefix,
            batch_size=batch_size,
            progress=progress,
            chat_template=chat_template,
        )
        return self.lam_from_signals(signals)

    # ----- tuning -----
    def tune(
        self,
        signals: ConfSignals,
        rollouts: Rollouts,
        grid: dict | None = None,
        objective: str = "constrained",
        epsilon: float = 0.02,
        alpha: float = 0.5,
    ) -> DamiConf:
        """Grid search of (w, tau, temperature) on a TRAIN split; returns the tuned copy.

        Each candidate's λ(q) is snapped to the nearest λ of the rollouts' grid, where its correctness and
        tokens are looked up (`Rollouts.evaluate_many`). Objectives:
          - "constrained" (default): among candidates whose accuracy is ≥ (best candidate accuracy − ε),
            the one with the fewest mean tokens (ties -> higher accuracy, then grid order);
          - "penalty": maximise accuracy − α · mean_tokens / mean_tokens(λ = max grid λ) (ties -> fewer
            tokens, then grid order).
        grid: {"w": [...], "tau": [...], "temperature": [...]} (default DEFAULT_TUNE_GRID; a missing key
        keeps this object's value). signals.ids selects and orders the rollouts.
        """
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        for name, v in (("epsilon", epsilon), ("alpha", alpha)):
            if not is_number(v) or not v >= 0 or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {v!r}")
        sub = _aligned(signals, rollouts)
        values = _tune_grid(self, grid)
        cand = torch.cartesian_prod(*(torch.tensor(values[k], dtype=torch.float64) for k in HYPER))
        cand = cand.reshape(-1, 3)  # [C, (w, tau, temperature)]
        lam = conf_lambda(signals.confidence, signals.discrepancy, cand[:, 0:1], cand[:, 1:2], cand[:, 2:3])  # [C, Q]
        acc, tok = sub.evaluate_many(lam)
        if objective == "constrained":
            feasible = acc >= acc.max() - epsilon - 1e-12
            key = [(-float(tok[i]), float(acc[i])) if feasible[i] else (-math.inf, -math.inf) for i in range(len(cand))]
        else:
            ref = max(float(sub.tokens[:, -1].mean()), 1e-9)
            util = acc - alpha * tok / ref
            key = [(float(util[i]), -float(tok[i])) for i in range(len(cand))]
        best = max(range(len(cand)), key=lambda i: (key[i], -i))
        w, tau, temp = (float(x) for x in cand[best])
        tuned = replace(self, w=w, tau=tau, temperature=temp, lam_grid=list(rollouts.grid))
        train = sub.evaluate(tuned.lam_from_signals(signals))
        setting = {"epsilon": epsilon} if objective == "constrained" else {"alpha": alpha}
        tuned.tuned = {
            "objective": objective,
            **setting,
            "n_train": len(sub.ids),
            "train_accuracy": train["accuracy"],
            "train_mean_tokens": train["mean_tokens"],
            "train_mean_lam": train["mean_lam"],
            "candidates": len(cand),
        }
        return tuned

    def sensitivity(self, signals: ConfSignals, rollouts: Rollouts, values: dict | None = None) -> list[dict]:
        """One-at-a-time sweep around this point: for each hyperparameter, vary it over values[name] with
        the other two held, and measure accuracy, mean tokens and mean λ on the given rollouts.

        Default values: w over 0, 0.1, …, 1; tau over this tau ± 0.05·k (k = −4..4); temperature over this
        temperature × (1/4, 1/2, 1, 2, 4). Returns rows {"param", "w", "tau", "temperature", "accuracy",
        "mean_tokens", "mean_lam"}.
        """
        sub = _aligned(signals, rollouts)
        default = {
            "w": DEFAULT_TUNE_GRID["w"],
            "tau": [round(self.tau + 0.05 * k, 6) for k in range(-4, 5)],
            "temperature": [self.temperature * f for f in (0.25, 0.5, 1.0, 2.0, 4.0)],
        }
        values = {**default, **(values or {})}
        rows = []
        for name in HYPER:
            for v in values[name]:
                point = replace(self, **{name: v}, tuned=None)
                rows.append(
                    {
                        "param": name,
                        "w": point.w,
                        "tau": point.tau,
                        "temperature": point.temperature,
                        **sub.evaluate(point.lam_from_signals(signals)),
                    }
                )
        return rows

    # ----- files -----
    def to_dict(self) -> dict:
        return {"format": "dami-conf", "version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> DamiConf:
        if not isinstance(data, dict) or data.get("format") != "dami-conf":
            raise ValueError("not a DAMI-Conf config: its 'format' field must be 'dami-conf'")
        if data.get("version") != 1:
            raise ValueError(f"unsupported DAMI-Conf config version {data.get('version')!r} (expected 1)")
        known = {f for f in cls.__dataclass_fields__}
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"DAMI-Conf config has unknown fields: {unknown}")
        return cls(**fields)

    def save(self, path) -> None:
        """Write the config as JSON to path (a .json file)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> DamiConf:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"DAMI-Conf config not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg})") from None
        return cls.from_dict(data)


HYPER = ("w", "tau", "temperature")


def _tune_grid(conf: DamiConf, grid: dict | None) -> dict:
    if grid is None:
        return dict(DEFAULT_TUNE_GRID)
    if not isinstance(grid, dict):
        raise ValueError("grid must be a dict of hyperparameter name -> list of values")
    unknown = sorted(set(grid) - set(HYPER))
    if unknown:
        raise ValueError(f"grid has unknown hyperparameters {unknown}; known: {list(HYPER)}")
    values = {k: list(grid.get(k, [getattr(conf, k)])) for k in HYPER}
    for k, vs in values.items():
        if not vs:
            raise ValueError(f"grid[{k!r}] is empty")
        for v in vs:  # validates ranges through the dataclass checks
            replace(conf, **{k: v})
    return values


def _aligned(signals: ConfSignals, rollouts: Rollouts) -> Rollouts:
    if not isinstance(signals, ConfSignals):
        raise ValueError(f"signals must be ConfSignals, got {type(signals).__name__}")
    if not isinstance(rollouts, Rollouts):
        raise ValueError(f"rollouts must be Rollouts, got {type(rollouts).__name__}")
    if signals.ids is None:
        raise ValueError("signals.ids is None: pass ids= to conf_signals so they can be matched to rollouts")
    return rollouts.select(signals.ids)
