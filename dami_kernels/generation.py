"""Mixed-λ batched generation: every prompt runs at its own λ, one `model.generate` pass per batch.

λ is expanded per returned row (max(num_beams, num_return_sequences) rows per prompt, the order HF
generate uses) and set in place on the model's λ state for the duration of each batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real

import torch
from tqdm.auto import tqdm

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


def encode_prompts(tokenizer, prompts: list[str], chat_template: bool | None = None) -> list[list[int]]:
    """Token ids of each prompt, as `generate` feeds them.

    chat_template None: apply the tokenizer's chat template (one user message, generation prompt
    added) when it has one; True: always (ValueError without one); False: never (the raw text,
    tokenized with the tokenizer's own special tokens).
    """
    if chat_template not in (None, True, False):
        raise ValueError(f"chat_template must be None, True or False, got {chat_template!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    use = has_template if chat_template is None else chat_template
    if use and not has_template:
        raise ValueError("chat_template=True but the tokenizer has no chat template")
    if not use:
        return [list(tokenizer(p)["input_ids"]) for p in prompts]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (padded positions are masked out anyway)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")


def left_pad(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists -> input_ids [N, L] (long) and attention_mask [N, L] (1 = real token)."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("prompts: every prompt must encode to at least one token")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


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
