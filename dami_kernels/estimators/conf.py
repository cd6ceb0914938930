"""DAMI-Conf's signals: System 1's confidence and the endpoints' discrepancy, measured on the pair.

Signals (per query q, both endpoints in ONE batched forward per step, see `conf_trace`):
  - a short greedy answer a_1..a_n (n ≤ max_answer_tokens, up to and including the first EOS) is decoded
    by the λ=0 (Instruct) rows; the λ=1 (Thinking) rows are teacher-forced with the same tokens, after
    the same prompt followed by a "skip thinking" prefix, so both next-token distributions p0_t, p1_t are
    over the same answer prefixes;
  - confidence   c(q) = exp( (1/n) Σ_t log max_v p0_t(v) )            ∈ [0, 1]
  - discrepancy  d(q) = (1/n) Σ_t JSD(p0_t, p1_t)   (nats)             ∈ [0, ln 2]

The estimator that maps (c, d) to λ(q), its tuning on rollouts and its config file: `conf_estimator.py`
(`DamiConf`, `conf_lambda`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dami_kernels.estimators.batching import (
    check_prompts,
    chunks,
    endpoint_lambdas,
    model_device,
)
from dami_kernels.estimators.signals import confidence, js_divergence, masked_mean
from dami_kernels.hf.prompts import encode_prompts, encode_text, pad_prompts, position_ids
from dami_kernels.validation import positive_int

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


def conf_trace(
    model,
    tokenizer,
    prompts,
    max_answer_tokens: int = 8,
    think_prefix: str = AUTO,
    keep_logits: bool = False,
    chat_template: bool | None = None,
) -> ConfTrace:
    """Run both endpoints on B prompts in one batch of 2B rows, one forward per answer step.

    Prompts are encoded as `dami_kernels.generation.generate` encodes them (chat_template: see
    `batching.encode_prompts`). Rows [0, B) run at λ=0 on the prompts, rows [B, 2B) at λ=1 on the
    prompts + think prefix (see `resolve_think_prefix`); λ is set with a [2B] tensor for the whole call
    and restored after. Rows are left-padded, the KV cache carries the prefix, and every step feeds the
    λ=0 rows' greedy token to both halves. Decoding stops after max_answer_tokens steps or when every
    λ=0 row has emitted an EOS.
    """
    from dami_kernels.hf.kv_cache import cache_kwarg, output_cache
    from dami_kernels.pair import lambda_scope  # imported here: `estimators` math works without transformers

    prompts = check_prompts(prompts)
    max_answer_tokens = positive_int(max_answer_tokens, "max_answer_tokens")
    b = len(prompts)
    device = model_device(model)
    prefix_ids = encode_text(tokenizer, resolve_think_prefix(tokenizer, think_prefix))
    side0 = encode_prompts(tokenizer, prompts, chat_template)
    prompt_ids = side0 + [s + prefix_ids for s in side0]
    ids, attn = pad_prompts(tokenizer, prompt_ids, device)
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
            out = model(
                input_ids=feed,
                attention_mask=attn,
                position_ids=pos,
                use_cache=True,
                logits_to_keep=1,
                **{cache_arg: output_cache(out)},
            )
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
        return {
            "ids": self.ids,
            "confidence": self.confidence.tolist(),
            "discrepancy": self.discrepancy.tolist(),
            "answer_tokens": self.answer_tokens.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ConfSignals:
        for key in ("confidence", "discrepancy", "answer_tokens"):
            if key not in data:
                raise ValueError(f"conf signals have no {key!r} field")
        return cls(
            torch.tensor(data["confidence"], dtype=torch.float64),
            torch.tensor(data["discrepancy"], dtype=torch.float64),
            torch.tensor(data["answer_tokens"], dtype=torch.long),
            data.get("ids"),
        )


def signals_from_trace(trace: ConfTrace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c [B], d [B], n [B]) of a trace, as defined in the module docstring."""
    c = confidence(trace.max_prob.double(), trace.answer_mask)
    d = masked_mean(trace.jsd.double(), trace.answer_mask)
    return c, d, trace.answer_mask.sum(dim=1)


def conf_signals(
    model,
    tokenizer,
    prompts,
    max_answer_tokens: int = 8,
    think_prefix: str = AUTO,
    ids=None,
    batch_size: int = 32,
    progress: bool = True,
    chat_template: bool | None = None,
) -> ConfSignals:
    """DAMI-Conf signals of many prompts, in batches of batch_size queries (2·batch_size rows).
    ids (optional, one per prompt) are kept with the signals to match them to rollouts."""
    prompts = check_prompts(prompts)
    if ids is not None and len(ids) != len(prompts):
        raise ValueError(f"ids has {len(ids)} entries for {len(prompts)} prompts")
    parts = []
    for batch in tqdm(chunks(prompts, batch_size), desc="dami-conf signals", disable=not progress):
        trace = conf_trace(model, tokenizer, batch, max_answer_tokens, think_prefix, chat_template=chat_template)
        parts.append(signals_from_trace(trace))
    c, d, n = (torch.cat(x) for x in zip(*parts, strict=True))
    return ConfSignals(c, d, n, None if ids is None else list(ids))
