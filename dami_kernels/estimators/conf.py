"""DAMI-Conf, the zero-shot estimator: λ(q) from System 1's confidence and the endpoints' discrepancy.

Signals (per query q, both endpoints in ONE batched forward per step, see `conf_trace`):
  - a short greedy answer a_1..a_n (n ≤ max_answer_tokens, up to and including the first EOS) is decoded
    by the λ=0 (Instruct) rows; the λ=1 (Thinking) rows are teacher-forced with the same tokens, after
    the same prompt followed by a "skip thinking" prefix, so both next-token distributions p0_t, p1_t are
    over the same answer prefixes;
  - confidence   c(q) = exp( (1/n) Σ_t log max_v p0_t(v) )            ∈ [0, 1]
  - discrepancy  d(q) = (1/n) Σ_t JSD(p0_t, p1_t)   (nats)             ∈ [0, ln 2]

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
import torch.nn.functional as F
from tqdm.auto import tqdm

from dami_kernels.estimators.batching import (
    check_prompts,
    chunks,
    endpoint_lambdas,
    model_device,
)
from dami_kernels.hf.prompts import encode_prompts, encode_text, left_pad, pad_token_id, position_ids
from dami_kernels.estimators.rollouts import Rollouts, check_grid, snap_to_grid
from dami_kernels.estimators.signals import LN2, confidence, js_divergence, masked_mean

AUTO = "auto"
QWEN3_NO_THINK = "<think>\n\n</think>\n\n"


def resolve_think_prefix(tokenizer, think_prefix: str | None) -> str:
    """The text appended to the λ=1 rows' prompt so that the Thinking side answers at once.

    "auto": if the tokenizer knows both `<think>` and `</think>` as tokens, the empty think block — the
    exact Qwen3 non-thinking string "<think>\\n\\n</think>\\n\\n" when the tokenizer's chat template
    contains it, else "<think></think>"; if it does not know them, "" (nothing is appended).
    Any other string is used as given ("" disables the prefix).
    """
    if think_prefix is None or not isinstance(think_prefix, str):
        raise ValueError(f"think_prefix must be a string ('auto' or the text itself), got {think_prefix!r}")
    if think_prefix != AUTO:
        return think_prefix
    vocab = tokenizer.get_vocab()
    if "<think>" not in vocab or "</think>" not in vocab:
        return ""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and QWEN3_NO_THINK in template:
        return QWEN3_NO_THINK
    return "<think></think>"


def eos_token_ids(model, tokenizer) -> list[int]:
    """EOS ids from the tokenizer and the model's generation config (which may list several)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config names an EOS token")
    return sorted(ids)


@dataclass
class ConfTrace:
    """Per-step record of one endpoint batch of B queries over T ≤ max_answer_tokens steps.

    answer_ids [B, T] long: greedy tokens of the λ=0 rows (also fed to the λ=1 rows);
    answer_mask [B, T] bool: answer tokens (up to and including the first EOS);
    max_prob [B, T]: max_v p0_t(v) of the λ=0 rows; jsd [B, T]: JSD(p0_t, p1_t) in nats;
    prompt_ids: the λ=0 and λ=1 prompts as token id lists (2B lists, unpadded);
    logits [2B, T, V] float32 (only with keep_logits): next-token logits, rows [0, B) at λ=0.
    """

    answer_ids: torch.Tensor
    answer_mask: torch.Tensor
    max_prob: torch.Tensor
    jsd: torch.Tensor
    prompt_ids: list[list[int]]
    logits: torch.Tensor | None = None


def _check_positive_int(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def conf_trace(model, tokenizer, prompts, max_answer_tokens: int = 8, think_prefix: str = AUTO,
               keep_logits: bool = False, chat_template: bool | None = None) -> ConfTrace:
    """Run both endpoints on B prompts in one batch of 2B rows, one forward per answer step.

    Prompts are encoded as `dami_kernels.generation.generate` encodes them (chat_template: see
    `batching.encode_prompts`). Rows [0, B) run at λ=0 on the prompts, rows [B, 2B) at λ=1 on the
    prompts + think prefix (see `resolve_think_prefix`); λ is set with a [2B] tensor for the whole call
    and restored after. Rows are left-padded, the KV cache carries the prefix, and every step feeds the
    λ=0 rows' greedy token to both halves. Decoding stops after max_answer_tokens steps or when every
    λ=0 row has emitted an EOS.
    """
    from dami_kernels.pair import lambda_scope  # imported here: `estimators` math works without transformers
    from dami_kernels.hf.kv_cache import cache_kwarg, output_cache

    prompts = check_prompts(prompts)
    max_answer_tokens = _check_positive_int(max_answer_tokens, "max_answer_tokens")
    b = len(prompts)
    device = model_device(model)
    pad = pad_token_id(tokenizer)
    prefix_ids = encode_text(tokenizer, resolve_think_prefix(tokenizer, think_prefix))
    side0 = encode_prompts(tokenizer, prompts, chat_template)
    prompt_ids = side0 + [s + prefix_ids for s in side0]
    ids, attn = left_pad(prompt_ids, pad, device)
    pos = position_ids(attn)
    eos = torch.tensor(eos_token_ids(model, tokenizer), device=device)
    cache_arg = cache_kwarg(model)

    toks, masks, maxp, jsds, logits_kept = [], [], [], [], []
    done = torch.zeros(b, dtype=torch.bool, device=device)
    with torch.no_grad(), lambda_scope(model, endpoint_lambdas(b, device)):
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
        for step in range(max_answer_tokens):
            logits = out.logits[:, -1, :].float()  # [2B, V]
            logp = F.log_softmax(logits, dim=-1)
            max_logp, tok = logp[:b].max(dim=-1)  # greedy answer of the λ=0 rows
            toks.append(tok)
            masks.append(~done)
            maxp.append(max_logp.exp())
            jsds.append(js_divergence(logp[:b], logp[b:]))
            if keep_logits:
                logits_kept.append(logits)
            done = done | torch.isin(tok, eos)
            if step + 1 == max_answer_tokens or bool(done.all()):
                break
            feed = torch.cat([tok, tok]).unsqueeze(1)  # [2B, 1]: teacher forcing of the λ=1 rows
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            out = model(input_ids=feed, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1,
                        **{cache_arg: output_cache(out)})
    return ConfTrace(
        answer_ids=torch.stack(toks, dim=1).cpu(),
        answer_mask=torch.stack(masks, dim=1).cpu(),
        max_prob=torch.stack(maxp, dim=1).cpu(),
        jsd=torch.stack(jsds, dim=1).cpu(),
        prompt_ids=prompt_ids,
        logits=torch.stack(logits_kept, dim=1).cpu() if keep_logits else None,
    )


@dataclass
class ConfSignals:
    """DAMI-Conf signals of Q queries: confidence [Q] and discrepancy [Q] (float64, CPU), the number of
    answer tokens n [Q] (long), and optionally the query ids they belong to (needed for tuning)."""

    confidence: torch.Tensor
    discrepancy: torch.Tensor
    answer_tokens: torch.Tensor
    ids: list[str] | None = None

    def __post_init__(self):
        q = self.confidence.shape[0] if isinstance(self.confidence, torch.Tensor) else -1
        for name in ("confidence", "discrepancy", "answer_tokens"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.shape != (q,):
                raise ValueError(f"{name} must be a 1-D tensor with one value per query")
        if self.ids is not None:
            self.ids = [str(i) for i in self.ids]
            if len(self.ids) != q:
                raise ValueError(f"ids has {len(self.ids)} entries for {q} queries")

    def to_dict(self) -> dict:
        return {"ids": self.ids, "confidence": self.confidence.tolist(),
                "discrepancy": self.discrepancy.tolist(), "answer_tokens": self.answer_tokens.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "ConfSignals":
        for key in ("confidence", "discrepancy", "answer_tokens"):
            if key not in data:
                raise ValueError(f"conf signals have no {key!r} field")
        return cls(torch.tensor(data["confidence"], dtype=torch.float64),
                   torch.tensor(data["discrepancy"], dtype=torch.float64),
                   torch.tensor(data["answer_tokens"], dtype=torch.long), data.get("ids"))


def signals_from_trace(trace: ConfTrace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c [B], d [B], n [B]) of a trace, as defined in the module docstring."""
    c = confidence(trace.max_prob.double(), trace.answer_mask)
    d = masked_mean(trace.jsd.double(), trace.answer_mask)
    return c, d, trace.answer_mask.sum(dim=1)


def conf_signals(model, tokenizer, prompts, max_answer_tokens: int = 8, think_prefix: str = AUTO,
                 ids=None, batch_size: int = 32, progress: bool = True,
                 chat_template: bool | None = None) -> ConfSignals:
    """DAMI-Conf signals of many prompts, in batches of batch_size queries (2·batch_size rows).
    ids (optional, one per prompt) are kept with the signals to match them to rollouts."""
    prompts = check_prompts(prompts)
    if ids is not None and len(ids) != len(prompts):
        raise ValueError(f"ids has {len(ids)} entries for {len(prompts)} prompts")
    parts = []
    for batch in tqdm(chunks(prompts, batch_size), desc="dami-conf signals", disable=not progress):
        trace = conf_trace(model, tokenizer, batch, max_answer_tokens, think_prefix, chat_template=chat_template)
        parts.append(signals_from_trace(trace))
    c, d, n = (torch.cat(x) for x in zip(*parts))
    return ConfSignals(c, d, n, None if ids is None else list(ids))


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
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            setattr(self, name, float(v))
        if not 0.0 <= self.w <= 1.0:
            raise ValueError(f"w must be in [0, 1], got {self.w}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        _check_positive_int(self.max_answer_tokens, "max_answer_tokens")
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

    def predict(self, model, tokenizer, prompts, batch_size: int = 32, progress: bool = True,
                chat_template: bool | None = None) -> torch.Tensor:
        """λ(q) for each prompt: [B] float32 on CPU."""
        signals = conf_signals(model, tokenizer, prompts, self.max_answer_tokens, self.think_prefix,
                               batch_size=batch_size, progress=progress, chat_template=chat_template)
        return self.lam_from_signals(signals)

    # ----- tuning -----
    def tune(self, signals: ConfSignals, rollouts: Rollouts, grid: dict | None = None,
             objective: str = "constrained", epsilon: float = 0.02, alpha: float = 0.5) -> "DamiConf":
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
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {v!r}")
        sub = _aligned(signals, rollouts)
        values = _tune_grid(self, grid)
        cand = torch.cartesian_prod(*(torch.tensor(values[k], dtype=torch.float64) for k in HYPER))
        cand = cand.reshape(-1, 3)  # [C, (w, tau, temperature)]
        lam = conf_lambda(signals.confidence, signals.discrepancy,
                          cand[:, 0:1], cand[:, 1:2], cand[:, 2:3])  # [C, Q]
        acc, tok = sub.evaluate_many(lam)
        if objective == "constrained":
            feasible = acc >= acc.max() - epsilon - 1e-12
            key = [(-float(tok[i]), float(acc[i])) if feasible[i] else (-math.inf, -math.inf)
                   for i in range(len(cand))]
        else:
            ref = max(float(sub.tokens[:, -1].mean()), 1e-9)
            util = acc - alpha * tok / ref
            key = [(float(util[i]), -float(tok[i])) for i in range(len(cand))]
        best = max(range(len(cand)), key=lambda i: (key[i], -i))
        w, tau, temp = (float(x) for x in cand[best])
        tuned = replace(self, w=w, tau=tau, temperature=temp, lam_grid=list(rollouts.grid))
        train = sub.evaluate(tuned.lam_from_signals(signals))
        setting = {"epsilon": epsilon} if objective == "constrained" else {"alpha": alpha}
        tuned.tuned = {"objective": objective, **setting, "n_train": len(sub.ids),
                       "train_accuracy": train["accuracy"], "train_mean_tokens": train["mean_tokens"],
                       "train_mean_lam": train["mean_lam"], "candidates": len(cand)}
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
                rows.append({"param": name, "w": point.w, "tau": point.tau,
                             "temperature": point.temperature, **sub.evaluate(point.lam_from_signals(signals))})
        return rows

    # ----- files -----
    def to_dict(self) -> dict:
        return {"format": "dami-conf", "version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "DamiConf":
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
    def load(cls, path) -> "DamiConf":
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
