"""Train the testbed pair: a shared tiny Qwen3 base, then an Instruct and a Thinking fine-tune of it.

All work is on the CPU, seeded and deterministic. The base learns both answer forms (direct and
scratchpad, 50/50); Instruct is then fine-tuned on direct answers only, Thinking on scratchpads only.
Held-out problems (``HELDOUT_SEED``) are never drawn for training.
"""
from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

from dami_kernels.testbed.tasks import LEVELS, Problem, direct_answer, make_problem, make_problems, scratchpad
from dami_kernels.testbed.tokenizer import chat_prompt

HELDOUT_SEED = 20_251_010
HELDOUT_RESERVE = 2000  # the first HELDOUT_RESERVE problems of HELDOUT_SEED are never trained on
MAX_NEW_TOKENS = 64


@dataclass
class Stage:
    """One training stage: ``steps`` AdamW steps at peak ``lr`` (one-cycle), ``think_frac`` scratchpads."""

    name: str
    steps: int
    lr: float
    think_frac: float
    seed: int


def heldout_problems(n: int) -> list[Problem]:
    """The first ``n`` held-out problems (balanced over all levels); ``n`` <= ``HELDOUT_RESERVE``."""
    if not 0 < n <= HELDOUT_RESERVE:
        raise ValueError(f"n must be in 1..{HELDOUT_RESERVE}, got {n!r}")
    return make_problems(n, HELDOUT_SEED)


def heldout_expressions() -> frozenset[str]:
    """The expressions of all ``HELDOUT_RESERVE`` held-out problems: pass as ``make_problems(..., exclude=)``
    to draw other splits (e.g. an estimator's train split) that never touch the held-out set."""
    return frozenset(p.expression for p in heldout_problems(HELDOUT_RESERVE))


def model_config(tokenizer, hidden: int = 128, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                 head_dim: int = 32, intermediate: int = 384) -> Qwen3Config:
    """The tiny Qwen3 config (tied embeddings) for ``tokenizer``'s vocabulary."""
    return Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, max_position_embeddings=128, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def encode_batch(tokenizer, problems: list[Problem], think: list[bool]) -> tuple[torch.Tensor, ...]:
    """Right-padded training batch: input_ids, attention_mask [B, T] and labels [B, T] (-100 off-answer).

    The loss covers the completion (direct answer or scratchpad) and the closing eos token.
    """
    prompts = [chat_prompt(tokenizer, p.expression) for p in problems]
    completions = [(scratchpad(p) if t else direct_answer(p)) + tokenizer.eos_token
                   for p, t in zip(problems, think)]
    p_ids = tokenizer(prompts, add_special_tokens=False).input_ids
    c_ids = tokenizer(completions, add_special_tokens=False).input_ids
    length = max(len(a) + len(b) for a, b in zip(p_ids, c_ids))
    ids = torch.full((len(problems), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for r, (a, b) in enumerate(zip(p_ids, c_ids)):
        n = len(a) + len(b)
        ids[r, :n] = torch.tensor(a + b)
        labels[r, len(a):n] = torch.tensor(b)
        mask[r, :n] = 1
    return ids, mask, labels


def batch_loss(model, tokenizer, problems: list[Problem], think: list[bool]) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens of a batch (0-d tensor).

    Problems are grouped by (level, form) and each group is padded on its own, so that short direct
    answers are not padded to the length of the longest scratchpad (about half the compute otherwise).
    """
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, (p, t) in enumerate(zip(problems, think)):
        groups.setdefault((p.level, t), []).append(i)
    total, count = 0.0, 0
    for key in sorted(groups):
        idx = groups[key]
        ids, mask, labels = encode_batch(tokenizer, [problems[i] for i in idx], [think[i] for i in idx])
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        target = labels[:, 1:]
        total = total + torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum")
        count += int((target != -100).sum())
    return total / count


def train_stage(model, tokenizer, stage: Stage, batch_size: int, exclude: frozenset[str]) -> list[float]:
    """Run one stage in place on ``model``; returns the loss per step."""
    torch.manual_seed(stage.seed)
    rng = random.Random(stage.seed)
    levels = sorted(LEVELS)
    opt = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=stage.lr, total_steps=max(stage.steps, 1),
                                                pct_start=0.1)
    model.train()
    losses = []
    bar = tqdm(range(stage.steps), desc=stage.name, mininterval=5.0)
    for _ in bar:
        problems = []
        while len(problems) < batch_size:
            p = make_problem(rng, rng.choice(levels))
            if p.expression not in exclude:
                problems.append(p)
        think = [rng.random() < stage.think_frac for _ in problems]
        loss = batch_loss(model, tokenizer, problems, think)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    model.eval()
    return losses


def train_pair(tokenizer, base_steps: int, ft_steps: int, batch_size: int = 128, base_lr: float = 3e-3,
               ft_lr: float = 5e-4, seed: int = 0) -> tuple[Qwen3ForCausalLM, Qwen3ForCausalLM, dict]:
    """Train the shared base, then the Instruct and Thinking fine-tunes of it (fp32, on the CPU).

    Returns (instruct_model, thinking_model, final losses per stage).
    """
    for name, v in (("base_steps", base_steps), ("ft_steps", ft_steps), ("batch_size", batch_size)):
        if not isinstance(v, int) or v < 0 or (name == "batch_size" and v == 0):
            raise ValueError(f"{name} must be a non-negative int (batch_size positive), got {v!r}")
    exclude = heldout_expressions()
    torch.manual_seed(seed)
    base = Qwen3ForCausalLM(model_config(tokenizer))
    stages = [Stage("base", base_steps, base_lr, 0.5, seed + 1)]
    log = {"base": train_stage(base, tokenizer, stages[0], batch_size, exclude)}
    pair = []
    for name, frac, s in (("instruct", 0.0, seed + 2), ("thinking", 1.0, seed + 3)):
        model = copy.deepcopy(base)
        log[name] = train_stage(model, tokenizer, Stage(name, ft_steps, ft_lr, frac, s), batch_size, exclude)
        pair.append(model)
    final = {k: (v[-1] if v else None) for k, v in log.items()}
    return pair[0], pair[1], final


def save_checkpoint(model, tokenizer, out_dir: str) -> None:
    """Save ``model`` (fp32 safetensors), ``tokenizer`` and a greedy generation config to ``out_dir``."""
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    make_portable(out_dir)


def make_portable(out_dir: str) -> None:
    """Post-process a saved checkpoint dir: a portable tokenizer class name and world-readable files."""
    # transformers 5 records its internal class name "TokenizersBackend"; the portable name that
    # transformers 4.x also resolves is "PreTrainedTokenizerFast" (an alias of it in 5.x).
    config_path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    for f in Path(out_dir).iterdir():  # package data must be readable by everyone (safetensors writes 0600)
        f.chmod(0o644)
