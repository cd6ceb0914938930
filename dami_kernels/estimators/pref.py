"""DAMI-Pref, the trained estimator: a small head ranks the λ grid from frozen query features.

Preference pairs (per query, over its rollouts on the λ grid; `preference_pairs`):
  - a correct answer beats a wrong one;
  - between two correct answers, the one with fewer generated tokens wins (equal tokens: no pair);
  - two wrong answers give no pair.
Head: z = (f(q) − μ) / σ, with μ, σ the per-dimension mean and std of the training features (stored with
the head), then scores s(q) = Linear_{H->G}(GELU(Linear_{F->H}(z))) ∈ R^G, one score per grid λ.
Loss (Bradley–Terry), a weighted mean over all pairs p = (q, w, l) of the training set:
    L = Σ_p a_p · (−log σ( s_w(q) − s_l(q) )) / Σ_p a_p
with a_p = accuracy_weight for a correct-vs-wrong pair and 1 for a shorter-correct pair (`pair_weights`;
accuracy_weight = 1 is the plain mean). Why the weight: for a query whose cheap λ_a is right with
probability p and whose costly λ_b is always right, the loss is minimised where s_a > s_b exactly when
p > accuracy_weight / (1 + accuracy_weight); accuracy_weight = 1 picks the cheap λ at p > 1/2, 9 at p > 0.9.
Prediction: λ(q) = grid[argmax_g s_g(q)] (ties -> the smaller λ).
Features f(q) (`query_features`): the prompt's last hidden state (after the final norm) pooled over its
tokens (pooling "mean" by default, "last" = the last prompt token, or "mean+last" = both concatenated), at
λ=0 and at λ=1 from ONE batched forward of 2B rows, concatenated: f = [h_0(q), h_1(q)] ∈ R^{2H}; with
conf_signals, DAMI-Conf's two signals of the query (System 1's confidence c and the endpoints'
discrepancy d, `conf.conf_signals` with its default settings) are appended: f = [h_0, h_1, c, d]; a list
of signal names appends only those (["confidence"]: f = [h_0, h_1, c]).
Files: DIR/head.safetensors (the head's tensors) and DIR/config.json (grid, feature_dim, hidden,
feature_spec, training record).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from dami_kernels.estimators.batching import (
    check_prompts,
    chunks,
    endpoint_lambdas,
    model_device,
)
from dami_kernels.estimators.conf import AUTO
from dami_kernels.estimators.rollouts import Rollouts, check_grid
from dami_kernels.hf.prompts import encode_prompts, pad_prompts, position_ids
from dami_kernels.validation import is_number, positive_int

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "head.safetensors"
FEATURE_KIND = "endpoint_hidden"
POOLINGS = ("mean", "last", "mean+last")
CONF_SIGNALS = ("confidence", "discrepancy")


def signal_names(conf_signals) -> list[str]:
    """The DAMI-Conf signals a feature spec appends: True -> both, False -> none, or a list of names
    (a subset of CONF_SIGNALS, kept in CONF_SIGNALS order)."""
    if isinstance(conf_signals, bool):
        return list(CONF_SIGNALS) if conf_signals else []
    if (
        not isinstance(conf_signals, (list, tuple))
        or not set(conf_signals) <= set(CONF_SIGNALS)
        or len(set(conf_signals)) != len(conf_signals)
    ):
        raise ValueError(
            f"conf_signals must be a bool or a list of distinct names from {CONF_SIGNALS}, got {conf_signals!r}"
        )
    return [name for name in CONF_SIGNALS if name in conf_signals]


# ----- preference pairs -----
def preference_pairs(rollouts: Rollouts) -> torch.Tensor:
    """All preference pairs of the rollouts: long [P, 3] with columns (query index, winner grid index,
    loser grid index), sorted by query, then winner, then loser. Rules in the module docstring."""
    if not isinstance(rollouts, Rollouts):
        raise ValueError(f"rollouts must be Rollouts, got {type(rollouts).__name__}")
    c, t = rollouts.correct, rollouts.tokens  # [Q, G]
    cw, cl = c.unsqueeze(2), c.unsqueeze(1)  # winner index on dim 1, loser on dim 2
    right_beats_wrong = cw & ~cl
    shorter_correct = cw & cl & (t.unsqueeze(2) < t.unsqueeze(1))
    return torch.nonzero(right_beats_wrong | shorter_correct)  # [P, 3], row-major order


def pair_weights(rollouts: Rollouts, pairs: torch.Tensor, accuracy_weight: float = 1.0) -> torch.Tensor:
    """Loss weight per pair [P] (float32): accuracy_weight where the winner is correct and the loser wrong,
    1 where both are correct (the shorter won). pairs [P, 3] from `preference_pairs(rollouts)`."""
    if not is_number(accuracy_weight) or not math.isfinite(accuracy_weight) or accuracy_weight <= 0:
        raise ValueError(f"accuracy_weight must be a positive number, got {accuracy_weight!r}")
    loser_wrong = ~rollouts.correct[pairs[:, 0], pairs[:, 2]]
    ones = torch.ones(pairs.shape[0], dtype=torch.float32)
    return torch.where(loser_wrong, ones * float(accuracy_weight), ones)


# ----- frozen query features -----
def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """hidden [N, L, H], mask [N, L] (1 = real token, left padding) -> [N, H] or [N, 2H] (mean+last)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * m).sum(dim=1) / m.sum(dim=1)
    last = hidden[:, -1]  # left padding: the last position is the prompt's last token
    return {"mean": mean, "last": last, "mean+last": torch.cat([mean, last], dim=-1)}[pooling]


def query_features(
    model,
    tokenizer,
    prompts,
    pooling: str = "mean",
    batch_size: int = 32,
    progress: bool = True,
    chat_template: bool | None = None,
    conf_signals: bool = False,
    signals=None,
    think_prefix: str = AUTO,
) -> torch.Tensor:
    """Frozen features of B prompts: [B, F] float32 on CPU, F = 2H (or 4H for pooling "mean+last"),
    plus one per DAMI-Conf signal that conf_signals names (True: both; see `signal_names`). signals: the
    prompts' ConfSignals if already measured (with the default settings and ``think_prefix``), so they are
    not measured twice.

    Prompts are encoded as `dami_kernels.generation.generate` encodes them (see
    `batching.encode_prompts`).
    Each batch runs as 2·b rows (the prompts at λ=0, then the same prompts at λ=1) in one forward of the
    model's base (no lm_head, no grad); the final-norm hidden states are pooled over the prompt tokens
    ("mean", "last" token, or both concatenated) and the λ=0 and λ=1 halves are concatenated.
    """
    from dami_kernels.pair import lambda_scope  # imported here: `estimators` math works without transformers

    prompts = check_prompts(prompts)
    names = signal_names(conf_signals)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    device = model_device(model)
    out = []
    for batch in tqdm(chunks(prompts, batch_size), desc="dami-pref features", disable=not progress):
        b = len(batch)
        seqs = encode_prompts(tokenizer, batch, chat_template)
        ids, attn = pad_prompts(tokenizer, seqs + seqs, device)
        with torch.no_grad(), lambda_scope(model, endpoint_lambdas(b, device)):
            hidden = model.base_model(
                input_ids=ids, attention_mask=attn, position_ids=position_ids(attn), use_cache=False
            ).last_hidden_state
        pooled = _pool(hidden.float(), attn, pooling)  # [2b, ...]
        out.append(torch.cat([pooled[:b], pooled[b:]], dim=-1).cpu())
    feats = torch.cat(out)
    if names:
        from dami_kernels.estimators.conf import conf_signals as measure

        sig = (
            signals
            if signals is not None
            else measure(
                model,
                tokenizer,
                prompts,
                think_prefix=think_prefix,
                batch_size=batch_size,
                progress=progress,
                chat_template=chat_template,
            )
        )
        if sig.confidence.shape[0] != len(prompts):
            raise ValueError(f"signals hold {sig.confidence.shape[0]} queries for {len(prompts)} prompts")
        feats = torch.cat([feats] + [getattr(sig, name).float()[:, None] for name in names], dim=1)
    return feats


# ----- the head -----
def _check_spec(spec) -> dict:
    if not isinstance(spec, dict):
        raise ValueError(f"feature_spec must be a dict, got {type(spec).__name__}")
    try:
        signal_names(spec.get("conf_signals", False))
        ok = (
            spec.get("kind") == FEATURE_KIND
            and spec.get("pooling") in POOLINGS
            and isinstance(spec.get("think_prefix", AUTO), str)
        )
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"feature_spec must be {{'kind': {FEATURE_KIND!r}, 'pooling': one of {POOLINGS}, "
            f"'conf_signals': bool or a list of names from {CONF_SIGNALS} (optional), 'think_prefix': str "
            f"(optional)}}, got {spec}"
        )
    return dict(spec)


class PrefHead(nn.Module):
    """Scores G grid λ values from features: [B, F] -> [B, G]. Standardise per dimension (buffers
    feat_mean, feat_std [F], see `fit_scaler`) -> Linear(F, H) -> GELU -> Linear(H, G).
    `feature_spec` records how the features were made (`query_features` arguments)."""

    def __init__(self, feature_dim: int, grid, hidden: int = 64, feature_spec: dict | None = None):
        super().__init__()
        for name, v in (("feature_dim", feature_dim), ("hidden", hidden)):
            positive_int(v, name)
        self.grid = check_grid(grid)
        self.feature_dim, self.hidden = feature_dim, hidden
        self.feature_spec = _check_spec(feature_spec or {"kind": FEATURE_KIND, "pooling": "mean"})
        self.training_record: dict = {}
        # per-dimension standardisation, fitted on the training features (`fit_scaler`)
        self.register_buffer("feat_mean", torch.zeros(feature_dim))
        self.register_buffer("feat_std", torch.ones(feature_dim))
        self.fc1 = nn.Linear(feature_dim, hidden)
        self.fc2 = nn.Linear(hidden, len(self.grid))

    def fit_scaler(self, features: torch.Tensor) -> None:
        """Set the standardisation to the per-dimension mean and std of features [Q, F] (std floored)."""
        self.feat_mean.copy_(features.mean(dim=0))
        self.feat_std.copy_(features.std(dim=0, unbiased=False).clamp_min(1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.feat_mean) / self.feat_std
        return self.fc2(F.gelu(self.fc1(z)))

    def _check_features(self, features) -> torch.Tensor:
        if not isinstance(features, torch.Tensor) or features.dim() != 2:
            raise ValueError("features must be a 2-D tensor [B, F]")
        if features.shape[1] != self.feature_dim:
            raise ValueError(
                f"features have dim {features.shape[1]} but the head expects "
                f"feature_dim={self.feature_dim} (feature_spec {self.feature_spec})"
            )
        if not bool(torch.isfinite(features).all()):
            raise ValueError("features must be finite")
        return features.to(device=self.fc1.weight.device, dtype=self.fc1.weight.dtype)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """λ(q) = grid[argmax scores]: features [B, F] -> λ [B] float32 on CPU (ties -> smaller λ)."""
        scores = self(self._check_features(features)).cpu()
        return torch.tensor(self.grid, dtype=torch.float32)[scores.argmax(dim=1)]

    def predict_prompts(
        self,
        model,
        tokenizer,
        prompts,
        batch_size: int = 32,
        progress: bool = True,
        chat_template: bool | None = None,
        signals=None,
    ):
        """λ(q) for prompts, with features made as `feature_spec` says: [B] float32. signals: the
        prompts' DAMI-Conf signals if already measured (see `query_features`)."""
        feats = query_features(
            model,
            tokenizer,
            prompts,
            pooling=self.feature_spec["pooling"],
            conf_signals=self.feature_spec.get("conf_signals", False),
            signals=signals,
            think_prefix=self.feature_spec.get("think_prefix", AUTO),
            batch_size=batch_size,
            progress=progress,
            chat_template=chat_template,
        )
        return self.predict(feats)

    def config(self) -> dict:
        return {
            "format": "dami-pref-head",
            "version": 1,
            "grid": self.grid,
            "feature_dim": self.feature_dim,
            "hidden": self.hidden,
            "feature_spec": self.feature_spec,
            "training": self.training_record,
        }

    def save(self, directory) -> None:
        """Write DIR/head.safetensors and DIR/config.json (DIR is created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME))
        (directory / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2) + "\n")

    @classmethod
    def load(cls, directory) -> PrefHead:
        """Read a head saved by `save`; missing files raise FileNotFoundError, bad content ValueError."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"DAMI-Pref head directory not found: {directory}")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"DAMI-Pref head directory {directory} has no {name}")
        try:
            cfg = json.loads((directory / CONFIG_NAME).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{directory / CONFIG_NAME}: not valid JSON ({err.msg})") from None
        if not isinstance(cfg, dict) or cfg.get("format") != "dami-pref-head":
            raise ValueError(f"{directory / CONFIG_NAME}: 'format' must be 'dami-pref-head'")
        if cfg.get("version") != 1:
            raise ValueError(f"{directory / CONFIG_NAME}: unsupported version {cfg.get('version')!r}")
        for key in ("grid", "feature_dim", "hidden", "feature_spec"):
            if key not in cfg:
                raise ValueError(f"{directory / CONFIG_NAME} has no {key!r} field")
        head = cls(cfg["feature_dim"], cfg["grid"], cfg["hidden"], cfg["feature_spec"])
        head.training_record = dict(cfg.get("training") or {})
        try:
            state = load_file(str(directory / WEIGHTS_NAME))
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{directory / WEIGHTS_NAME}: cannot read safetensors ({err})") from None
        expected = head.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{directory / WEIGHTS_NAME} does not match config.json: "
                f"missing tensors {missing}, unexpected tensors {unexpected}"
            )
        for k, v in expected.items():
            if state[k].shape != v.shape:
                raise ValueError(
                    f"{directory / WEIGHTS_NAME}: tensor {k!r} has shape {tuple(state[k].shape)} "
                    f"but config.json implies {tuple(v.shape)}"
                )
        head.load_state_dict(state)
        head.eval()
        return head


def bradley_terry_loss(scores: torch.Tensor, pairs: torch.Tensor, weights: torch.Tensor | None = None):
    """Weighted mean over pairs of −log σ(s_w − s_l): scores [Q, G], pairs long [P, 3] (query, winner,
    loser), weights [P] or None (plain mean) -> 0-d tensor."""
    sw = scores[pairs[:, 0], pairs[:, 1]]
    sl = scores[pairs[:, 0], pairs[:, 2]]
    per_pair = F.softplus(sl - sw)  # softplus(−x) = −log σ(x), stable
    if weights is None:
        return per_pair.mean()
    return (per_pair * weights).sum() / weights.sum()


def train_pref_head(
    features: torch.Tensor,
    pairs: torch.Tensor,
    grid,
    steps: int = 300,
    lr: float = 3e-3,
    seed: int = 0,
    hidden: int = 64,
    weight_decay: float = 1e-4,
    feature_spec: dict | None = None,
    weights: torch.Tensor | None = None,
    progress: bool = True,
) -> tuple[PrefHead, list[float]]:
    """Train a PrefHead with full-batch AdamW on the Bradley–Terry loss.

    features [Q, F] (row q = query q of the rollouts the pairs came from), pairs long [P, 3] from
    `preference_pairs`, grid: the rollouts' λ grid, weights: [P] loss weights (`pair_weights`) or None.
    The initialisation is seeded by `seed` without touching the global RNG. Returns (head in eval mode,
    loss per step [steps]).
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError("features must be a 2-D tensor [Q, F]")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features must be finite")
    if not isinstance(pairs, torch.Tensor) or pairs.dim() != 2 or pairs.shape[1] != 3 or pairs.is_floating_point():
        raise ValueError("pairs must be an integer tensor [P, 3] (query, winner, loser)")
    if pairs.shape[0] == 0:
        raise ValueError("pairs is empty: no query has a correct-vs-wrong or shorter-correct preference")
    grid = check_grid(grid)
    if int(pairs[:, 0].max()) >= features.shape[0] or int(pairs[:, 0].min()) < 0:
        raise ValueError(f"pairs name queries outside features' {features.shape[0]} rows")
    if int(pairs[:, 1:].max()) >= len(grid) or int(pairs[:, 1:].min()) < 0:
        raise ValueError(f"pairs name grid indices outside the grid of {len(grid)} values")
    positive_int(steps, "steps")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or weights.shape != (pairs.shape[0],):
            raise ValueError(f"weights must be a tensor [P={pairs.shape[0]}], one per pair")
        if not bool((torch.isfinite(weights) & (weights > 0)).all()):
            raise ValueError("weights must be finite and positive")
        weights = weights.detach().to(torch.float32).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = PrefHead(features.shape[1], grid, hidden, feature_spec)
    feats = features.detach().to(torch.float32).cpu()
    head.fit_scaler(feats)
    pairs = pairs.to(torch.long).cpu()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    head.train()
    losses = []
    bar = tqdm(range(steps), desc="dami-pref train", disable=not progress)
    for _ in bar:
        loss = bradley_terry_loss(head(feats), pairs, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    head.eval()
    head.training_record = {
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "weight_decay": weight_decay,
        "n_queries": int(features.shape[0]),
        "n_pairs": int(pairs.shape[0]),
        "weighted": weights is not None,
        "first_loss": losses[0],
        "final_loss": losses[-1],
    }
    return head, losses
