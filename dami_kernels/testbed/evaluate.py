"""Score a testbed checkpoint on problems with greedy, batched, left-padded Hugging Face ``generate``."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from dami_kernels.testbed.tasks import Problem, check_answer
from dami_kernels.testbed.tokenizer import chat_prompt


def generated_lengths(new_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Tokens generated per row of ``new_ids`` [B, T]: up to and including the first eos (T if none). [B]"""
    is_eos = new_ids == eos_id
    full = torch.full((new_ids.shape[0],), new_ids.shape[1], dtype=torch.long)
    return torch.where(is_eos.any(1), is_eos.long().argmax(1) + 1, full)


@torch.no_grad()
def greedy_outputs(
    model, tokenizer, questions: list[str], batch_size: int = 512, max_new_tokens: int = 64
) -> tuple[list[str], list[int]]:
    """Greedy completions of ``questions`` through the chat template: (decoded texts, generated tokens)."""
    texts, lengths = [], []
    tokenizer.padding_side = "left"
    for i in tqdm(range(0, len(questions), batch_size), desc="generate", leave=False):
        prompts = [chat_prompt(tokenizer, q) for q in questions[i : i + batch_size]]
        enc = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = out[:, enc.input_ids.shape[1] :]
        n = generated_lengths(new, tokenizer.eos_token_id)
        for row, k in zip(new, n.tolist(), strict=True):
            texts.append(tokenizer.decode(row[:k], skip_special_tokens=True))
            lengths.append(k)
    return texts, lengths


def score(model, tokenizer, problems: list[Problem], batch_size: int = 512, max_new_tokens: int = 64) -> dict:
    """Accuracy and mean generated tokens overall and per difficulty level (greedy decoding)."""
    texts, lengths = greedy_outputs(model, tokenizer, [p.expression for p in problems], batch_size, max_new_tokens)
    correct = [check_answer(p, t) for p, t in zip(problems, texts, strict=True)]

    def summary(idx):
        return {
            "n": len(idx),
            "accuracy": sum(correct[i] for i in idx) / len(idx),
            "mean_tokens": sum(lengths[i] for i in idx) / len(idx),
        }

    out = summary(range(len(problems)))
    out["per_level"] = {
        str(lv): summary([i for i, p in enumerate(problems) if p.level == lv])
        for lv in sorted({p.level for p in problems})
    }
    return out
