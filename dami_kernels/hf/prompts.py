"""Prompt encoding and left padding (the tokenizer's own, `pad_prompts`), shared by generation, the
estimators and the evaluation harness."""

from __future__ import annotations

import torch


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of text, without the special tokens the tokenizer would add."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompts(tokenizer, prompts: list[str], chat_template: bool | None = None) -> list[list[int]]:
    """Token ids of each prompt, as `generate` feeds them.

    chat_template None: apply the tokenizer's chat template (one user message, generation prompt
    added) when it has one; True: always (ValueError without one); False: never (the raw text,
    tokenized with the tokenizer's own special tokens, except a BOS when the text already starts with
    it, e.g. a chat-formatted prompt from another tool).
    """
    if chat_template not in (None, True, False):
        raise ValueError(f"chat_template must be None, True or False, got {chat_template!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    use = has_template if chat_template is None else chat_template
    if use and not has_template:
        raise ValueError("chat_template=True but the tokenizer has no chat template")
    if not use:
        bos = getattr(tokenizer, "bos_token", None)
        return [list(tokenizer(p, add_special_tokens=not (bos and p.startswith(bos)))["input_ids"]) for p in prompts]
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    return [encode_text(tokenizer, t) for t in texts]


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (padded positions are masked out anyway)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")


def _check_nonempty(seqs: list[list[int]]) -> None:
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("prompts: every prompt must encode to at least one token")


def pad_prompts(tokenizer, seqs: list[list[int]], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists with the tokenizer's own padding -> input_ids [N, L] and attention_mask [N, L]
    (int64, 1 = real token) on `device`.

    `tokenizer.pad(..., padding_side="left")` pads with the tokenizer's pad token. A tokenizer without one
    (tokenizer.pad refuses to pad then) is padded with its EOS id by `left_pad` (`pad_token_id`; padded
    positions are masked out anyway).
    """
    if tokenizer.pad_token_id is None:
        return left_pad(seqs, pad_token_id(tokenizer), device)
    _check_nonempty(seqs)
    batch = tokenizer.pad(
        {"input_ids": seqs}, padding=True, padding_side="left", return_attention_mask=True, return_tensors="pt"
    )
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def left_pad(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists with `pad_id`, no tokenizer needed -> input_ids [N, L] (long) and
    attention_mask [N, L] (1 = real token). With the tokenizer at hand, use `pad_prompts`."""
    _check_nonempty(seqs)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: [N, L] long (padding gets position 0)."""
    return (attention_mask.cumsum(dim=-1) - 1).clamp_min(0)
