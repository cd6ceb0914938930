"""Mixed-λ batched generation: every prompt runs at its own λ, one `model.generate` pass per batch.

λ is expanded per returned row (max(num_beams, num_return_sequences) rows per prompt, the order HF
generate uses) and set in place on the model's λ state for the duration of each batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real

import torch
from tqdm.auto import tqdm

from dami_kernels.hf.prompts import encode_prompts, left_pad, pad_token_id
from dami_kernels.hf.lam import generation_expand_size, lambda_scope, lambda_state
from dami_kernels.modules import validate_lambda


@dataclass
class GenerationResult:
    """One returned sequence: its prompt, λ, decoded text and generated-token count (EOS included)."""

    prompt_index: int
    sequence_index: int
    prompt: str
    lam: float
    text: str
    num_tokens: int
    token_ids: list[int] = field(repr=False)


def per_prompt_lambdas(lam, n_prompts: int, allow_extrapolation: bool) -> list[float]:
    """λ for each prompt: one number for all, or a list/1-D tensor with one value per prompt."""
    if isinstance(lam, torch.Tensor):
        lam = lam.reshape(-1).tolist() if lam.dim() <= 1 else lam
    if isinstance(lam, Real) and not isinstance(lam, bool):
        lam = [float(lam)] * n_prompts
    if isinstance(lam, list) and len(lam) == 1 and n_prompts > 1:
        lam = lam * n_prompts
    validate_lambda(lam, allow_extrapolation)
    if len(lam) != n_prompts:
        raise ValueError(f"lam has {len(lam)} values for {n_prompts} prompts; give one λ for all or one per prompt")
    return [float(v) for v in lam]


def _eos_ids(model, tokenizer, kwargs) -> set[int]:
    eos = kwargs.get("eos_token_id")
    if eos is None:
        config = kwargs.get("generation_config") or model.generation_config
        eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def count_generated(tokens: list[int], eos_ids: set[int]) -> int:
    """Generated tokens up to and including the first EOS (HF pads only after it)."""
    for k, t in enumerate(tokens):
        if t in eos_ids:
            return k + 1
    return len(tokens)


def generate(model, tokenizer, prompts, lam, *, batch_size: int | None = None, chat_template: bool | None = None,
             progress: bool = True, **generation_kwargs) -> list[GenerationResult]:
    """Generate for every prompt at its own λ; returns results ordered by prompt, then returned sequence.

    prompts: a string or a list of strings. lam: one number for all prompts, or a list / 1-D tensor
    with one λ per prompt. batch_size: prompts per `model.generate` call (default: all at once).
    chat_template: None applies the tokenizer's chat template when it has one, False never, True
    always (error without one). generation_kwargs go to `model.generate` (e.g. max_new_tokens,
    do_sample, num_beams, num_return_sequences). The prompts are left-padded; `num_tokens` counts
    generated tokens up to and including EOS, never padding.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    state = lambda_state(model)
    lams = per_prompt_lambdas(lam, len(prompts), state.allow_extrapolation)
    if batch_size is None:
        batch_size = len(prompts)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    for key in ("input_ids", "attention_mask", "inputs_embeds"):
        if key in generation_kwargs:
            raise ValueError(f"{key} is built from the prompts; do not pass it")
    pad_id = pad_token_id(tokenizer)
    generation_kwargs.setdefault("pad_token_id", pad_id)
    eos_ids = _eos_ids(model, tokenizer, generation_kwargs)
    expand = generation_expand_size(model, generation_kwargs)
    n_return = int(generation_kwargs.get("num_return_sequences") or
                   getattr(generation_kwargs.get("generation_config") or model.generation_config,
                           "num_return_sequences", None) or 1)
    encoded = encode_prompts(tokenizer, prompts, chat_template)
    device = state.lam.device
    results: list[GenerationResult] = []
    starts = range(0, len(prompts), batch_size)
    with tqdm(total=len(prompts), desc="generating", unit="prompt", disable=not progress) as bar:
        for start in starts:
            idx = list(range(start, min(start + batch_size, len(prompts))))
            ids, mask = left_pad([encoded[i] for i in idx], pad_id, device)
            lam_b = torch.tensor([lams[i] for i in idx], dtype=torch.float32)
            with torch.no_grad(), lambda_scope(model, lam_b, expand=expand):
                out = model.generate(input_ids=ids, attention_mask=mask, **generation_kwargs)
            new = out[:, ids.shape[1]:].tolist()
            if len(new) != len(idx) * n_return:
                raise RuntimeError(f"generate returned {len(new)} rows for {len(idx)} prompts × {n_return} sequences")
            for row, tokens in enumerate(new):
                i, s = idx[row // n_return], row % n_return
                n = count_generated(tokens, eos_ids)
                text = tokenizer.decode(tokens[:n], skip_special_tokens=True)
                results.append(GenerationResult(i, s, prompts[i], lams[i], text, n, tokens[:n]))
            bar.update(len(idx))
            bar.set_postfix(tokens=sum(r.num_tokens for r in results))
    return results
