"""Train the testbed pair: a shared tiny Qwen3 base, then an Instruct and a Thinking fine-tune of it.

All work is on the CPU, seeded and deterministic. The base learns direct answers and scratchpads (50/50),
each scratchpad one or two columns per line (``BASE_WIDTH``); Instruct is then fine-tuned on direct
answers only, Thinking on ``THINKING_WIDTH``-column scratchpads (80%) and on direct answers in
Instruct's own format (20%, its non-thinking mode), so that the Thinking model's direct answer is a
second, independent System-1 opinion that DAMI-Conf's discrepancy compares with Instruct's (with no think
prefix on the λ=1 rows), and so that both fine-tunes refine the same direct-answer format (a Thinking
model that only ever answered after ``<think></think>`` made the low-λ part of the segment worse than
Instruct). Training problems are drawn uniformly from the "train" split of the problem space
(`tasks.split_of`); evaluation draws come from "dev" and "test", which training never sees.
`stage_batches` replays exactly what a stage trained on.
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

from dami_kernels.testbed.tasks import (
    THINKING_WIDTH,
    Problem,
    direct_answer,
    draw_problem,
    make_problems,
    no_think_answer,
    scratchpad,
)
from dami_kernels.testbed.tokenizer import chat_prompt
from dami_kernels.validation import is_int, is_positive_int

HELDOUT_SEED = 20_251_010  # seed of the test-split draw the pair's metrics are measured on
MAX_NEW_TOKENS = 96
FORMS = ("direct", "think", "nothink")
BASE_STEPS = 1000  # the shared base's default length
THINKING_STEPS = 600  # the Thinking fine-tune's default length (it sharpens THINKING_WIDTH-column lines)
BASE_WIDTH = (1, 2)  # columns per scratchpad line in the base (a tuple: each scratchpad's width drawn from it)


@dataclass
class Stage:
    """One training stage: ``steps`` AdamW steps at peak ``lr`` (one-cycle); each example is a scratchpad
    of ``think_width`` columns per line with probability ``think_frac``, a no-think answer with
    ``nothink_frac``, else a direct answer. A tuple ``think_width`` draws each scratchpad's width
    uniformly from it."""

    name: str
    steps: int
    lr: float
    think_frac: float
    seed: int
    nothink_frac: float = 0.0
    think_width: int | tuple[int, ...] = 1

    def __post_init__(self):
        if not self.widths or any(not is_positive_int(w) for w in self.widths):
            raise ValueError(f"think_width must be a positive int or a tuple of them, got {self.think_width!r}")

    @property
    def widths(self) -> tuple:
        """The scratchpad widths this stage draws from (one entry for a single width)."""
        return self.think_width if isinstance(self.think_width, tuple) else (self.think_width,)


def heldout_problems(n: int) -> list[Problem]:
    """``n`` problems of the "test" split drawn by ``HELDOUT_SEED`` (balanced over levels): the set the
    pair's metrics are measured on."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return make_problems(n, HELDOUT_SEED, split="test")


def stage_batches(stage: Stage, batch_size: int):
    """The (problems, forms, widths) of every step of ``stage``, in order: uniform draws from the "train"
    split; widths[i] is the scratchpad width of a "think" example (1 for the other forms)."""
    rng = random.Random(stage.seed)
    choices = stage.widths
    for _ in range(stage.steps):
        problems = [draw_problem(rng, "train") for _ in range(batch_size)]
        forms, widths = [], []
        for _ in problems:
            u = rng.random()
            forms.append(
                "think"
                if u < stage.think_frac
                else "nothink"
                if u < stage.think_frac + stage.nothink_frac
                else "direct"
            )
            # a single width draws nothing, so such stages replay the batches of earlier releases
            widths.append(1 if forms[-1] != "think" else choices[0] if len(choices) == 1 else rng.choice(choices))
        yield problems, forms, widths


def pair_stages(
    base_steps: int,
    ft_steps: int,
    base_lr: float = 3e-3,
    ft_lr: float = 5e-4,
    seed: int = 0,
    thinking_steps: int | None = None,
    base_width: int | tuple[int, ...] = BASE_WIDTH,
) -> dict[str, Stage]:
    """The three stages of `train_pair`: base (scratchpads of ``base_width`` columns), then Instruct
    (``ft_steps``) and Thinking (``thinking_steps``; None: ``ft_steps``) fine-tunes of it."""
    steps = ft_steps if thinking_steps is None else thinking_steps
    return {
        "base": Stage("base", base_steps, base_lr, 0.5, seed + 1, think_width=base_width),
        "instruct": Stage("instruct", ft_steps, ft_lr, 0.0, seed + 2),
        "thinking": Stage("thinking", steps, ft_lr, 0.8, seed + 3, think_width=THINKING_WIDTH),
    }


def trained_canonicals(
    base_steps: int,
    ft_steps: int,
    batch_size: int = 128,
    seed: int = 0,
    thinking_steps: int | None = None,
    base_width: int | tuple[int, ...] = BASE_WIDTH,
) -> set[str]:
    """The canonical forms (`Problem.canonical`) of every problem the pair trained on (replayed)."""
    stages = pair_stages(base_steps, ft_steps, seed=seed, thinking_steps=thinking_steps, base_width=base_width)
    return {
        p.canonical for stage in stages.values() for problems, *_ in stage_batches(stage, batch_size) for p in problems
    }


def model_config(
    tokenizer,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 32,
    intermediate: int = 384,
) -> Qwen3Config:
    """The tiny Qwen3 config (tied embeddings) for ``tokenizer``'s vocabulary."""
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _form(f) -> str:
    if isinstance(f, bool):
        return "think" if f else "direct"
    if f not in FORMS:
        raise ValueError(f"form must be one of {FORMS} (or a bool: think), got {f!r}")
    return f


def completion(problem: Problem, form, think_width: int = 1) -> str:
    """The training target of ``problem`` in ``form`` (one of FORMS; a bool means think / direct)."""
    form = _form(form)
    if form == "think":
        return scratchpad(problem, think_width)
    return direct_answer(problem) if form == "direct" else no_think_answer(problem)


def _per_example(widths, n: int) -> list[int]:
    if isinstance(widths, int):
        return [widths] * n
    if len(widths) != n:
        raise ValueError(f"widths has {len(widths)} entries for {n} problems")
    return list(widths)


def encode_batch(
    tokenizer, problems: list[Problem], forms: list, think_width: int | list[int] = 1
) -> tuple[torch.Tensor, ...]:
    """Right-padded training batch: input_ids, attention_mask [B, T] and labels [B, T] (-100 off-answer).

    forms: one of FORMS per problem (a bool means think / direct); scratchpads have ``think_width``
    columns per line (one int, or one per problem). The loss covers the completion and the closing eos.
    """
    prompts = [chat_prompt(tokenizer, p.expression) for p in problems]
    widths = _per_example(think_width, len(problems))
    completions = [completion(p, f, w) + tokenizer.eos_token for p, f, w in zip(problems, forms, widths, strict=True)]
    p_ids = tokenizer(prompts, add_special_tokens=False).input_ids
    c_ids = tokenizer(completions, add_special_tokens=False).input_ids
    length = max(len(a) + len(b) for a, b in zip(p_ids, c_ids, strict=True))
    ids = torch.full((len(problems), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for r, (a, b) in enumerate(zip(p_ids, c_ids, strict=True)):
        n = len(a) + len(b)
        ids[r, :n] = torch.tensor(a + b)
        labels[r, len(a) : n] = torch.tensor(b)
        mask[r, :n] = 1
    return ids, mask, labels


def batch_loss(
    model, tokenizer, problems: list[Problem], forms: list, think_width: int | list[int] = 1
) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens of a batch (0-d tensor).

    Problems are grouped by form (and scratchpad width) and each group is padded on its own, so that
    short direct answers are not padded to the length of the scratchpads (about half the compute otherwise).
    """
    widths = _per_example(think_width, len(problems))
    groups: dict[tuple[str, int], list[int]] = {}
    for i, f in enumerate(forms):
        groups.setdefault((_form(f), widths[i]), []).append(i)
    total, count = 0.0, 0
    for key in sorted(groups):
        idx = groups[key]
        ids, mask, labels = encode_batch(
            tokenizer, [problems[i] for i in idx], [forms[i] for i in idx], [widths[i] for i in idx]
        )
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        target = labels[:, 1:]
        total = total + torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
        )
        count += int((target != -100).sum())
    return total / count


def train_stage(model, tokenizer, stage: Stage, batch_size: int) -> list[float]:
    """Run one stage in place on ``model`` (batches from `stage_batches`); returns the loss per step."""
    torch.manual_seed(stage.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=0.01, betas=(0.9, 0.98))
    # OneCycleLR divides by (pct_start * steps - 1), which is 0 at 10 steps with pct_start 0.1: stages of
    # 3-19 steps warm up for exactly one step (pct_start 2 / steps); 20 steps or more keep 0.1
    pct = 2 / stage.steps if 3 <= stage.steps < 20 else 0.1
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=stage.lr, total_steps=max(stage.steps, 1), pct_start=pct)
    model.train()
    losses = []
    bar = tqdm(stage_batches(stage, batch_size), total=stage.steps, desc=stage.name, mininterval=5.0)
    for problems, forms, widths in bar:
        loss = batch_loss(model, tokenizer, problems, forms, widths)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    model.eval()
    return losses


def train_pair(
    tokenizer,
    base_steps: int,
    ft_steps: int,
    batch_size: int = 128,
    base_lr: float = 3e-3,
    ft_lr: float = 5e-4,
    seed: int = 0,
    thinking_steps: int | None = None,
    base_width: int | tuple[int, ...] = BASE_WIDTH,
) -> tuple[Qwen3ForCausalLM, Qwen3ForCausalLM, dict]:
    """Train the shared base (scratchpads of ``base_width`` columns), then the Instruct (``ft_steps``) and
    Thinking (``thinking_steps``; None: ``ft_steps``) fine-tunes of it (fp32, on the CPU).

    Returns (instruct_model, thinking_model, final losses per stage).
    """
    for name, v in (
        ("base_steps", base_steps),
        ("ft_steps", ft_steps),
        ("batch_size", batch_size),
        ("thinking_steps", ft_steps if thinking_steps is None else thinking_steps),
    ):
        if not is_int(v) or v < 0 or (name == "batch_size" and v == 0):
            raise ValueError(f"{name} must be a non-negative int (batch_size positive), got {v!r}")
    stages = pair_stages(base_steps, ft_steps, base_lr, ft_lr, seed, thinking_steps, base_width)
    torch.manual_seed(seed)
    base = Qwen3ForCausalLM(model_config(tokenizer))
    log = {"base": train_stage(base, tokenizer, stages["base"], batch_size)}
    pair = []
    for name in ("instruct", "thinking"):
        model = copy.deepcopy(base)
        log[name] = train_stage(model, tokenizer, stages[name], batch_size)
        pair.append(model)
    final = {k: (v[-1] if v else None) for k, v in log.items()}
    return pair[0], pair[1], final


def save_checkpoint(model, tokenizer, out_dir: str) -> None:
    """Save ``model`` (fp32 safetensors), ``tokenizer`` and a greedy generation config to ``out_dir``."""
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
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
