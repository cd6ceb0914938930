"""Mixed-λ batched generation: every prompt runs at its own λ, one `model.generate` pass per batch.

λ is expanded per returned row (max(num_beams, num_return_sequences) rows per prompt, the order HF
generate uses) and set in place on the model's λ state for the duration of each batch.

`generate(..., compile=True)` runs the decode step through transformers' own compiled path: a static KV
cache (``cache_implementation="static"``) plus a ``compile_config``, which makes ``model.generate``
wrap the model's forward in ``torch.compile`` (``model.get_compiled_call``) for every decode step; the
prefill stays eager. λ is read from the model's λ buffer, which is updated in place between batches, so
changing λ (uniform or mixed) between calls reuses the compiled graph (and the CUDA graphs of
``mode="reduce-overhead"``) without recompiling.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from dami_kernels.hf.prompts import (
    encode_prompts,
    left_pad,  # noqa: F401 (importable from here too)
    pad_prompts,
    pad_token_id,
)
from dami_kernels.pair.lambdas import generation_expand_size, lambda_lock, lambda_scope, lambda_state
from dami_kernels.validation import is_real, positive_int, validate_lambda


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


def unknown_characters(tokenizer, prompts: list[str], encoded: list[list[int]]) -> list[str]:
    """Characters of ``prompts`` that ``tokenizer`` encodes as its unknown token (e.g. anything outside
    the testbed tokenizer's small alphabet), in order of first appearance; [] when the tokenizer has no
    unknown token or no encoded prompt contains it. Cheap: a set lookup per prompt, and single-character
    encodes only for the prompts that did produce the unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    # Special and added tokens (<|bos|>, <think>, ...) typed into a prompt are known as a whole, not per character.
    specials = sorted(
        {str(t) for t in getattr(tokenizer, "all_special_tokens", []) or []}
        | set(getattr(tokenizer, "get_added_vocab", dict)() or {}),
        key=len,
        reverse=True,
    )
    found: dict[str, None] = {}
    for prompt, ids in zip(prompts, encoded, strict=True):
        if unk not in ids:
            continue
        for tok in specials:
            if tok:
                prompt = prompt.replace(tok, " ")
        for ch in dict.fromkeys(prompt):
            if ch not in found and unk in tokenizer(ch, add_special_tokens=False)["input_ids"]:
                found[ch] = None
    return list(found)


def per_prompt_lambdas(lam, n_prompts: int, allow_extrapolation: bool) -> list[float]:
    """λ for each prompt: one number for all, or a list/1-D tensor with one value per prompt."""
    if isinstance(lam, torch.Tensor):
        lam = lam.reshape(-1).tolist() if lam.dim() <= 1 else lam
    if is_real(lam):
        lam = [float(lam)] * n_prompts
    if isinstance(lam, list) and len(lam) == 1 and n_prompts > 1:
        lam = lam * n_prompts
    validate_lambda(lam, allow_extrapolation)
    if len(lam) != n_prompts:
        raise ValueError(f"lam has {len(lam)} values for {n_prompts} prompts; give one λ for all or one per prompt")
    return [float(v) for v in lam]


def eos_ids(model, tokenizer, kwargs: dict | None = None) -> set[int]:
    """The EOS token ids: kwargs' eos_token_id, else the generation config's (kwargs' or the model's), else the
    tokenizer's; empty when none has one."""
    kwargs = kwargs or {}
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


# Cache implementations transformers can compile the decode step with (its STATIC_CACHE_IMPLEMENTATIONS).
COMPILE_CACHE_IMPLEMENTATIONS = ("static", "offloaded_static")


def compile_config_for(device, backend: str = "inductor"):
    """The transformers `CompileConfig` that `generate(compile=...)` uses on `device`.

    backend "inductor" (the default): mode="reduce-overhead" on CUDA (inductor kernels plus CUDA graphs,
    transformers' own default) and mode="default" elsewhere (CUDA graphs need CUDA; on the CPU inductor
    needs a C++ compiler). Any other torch.compile backend ("aot_eager", "eager", ...) runs with no mode.
    The config is flagged to compile on every device (transformers' `generate` compiles on accelerators
    such as CUDA and XPU only unless `_compile_all_devices` is set).
    """
    from transformers import CompileConfig

    if not isinstance(backend, str) or not backend:
        raise ValueError(f"compile backend must be a non-empty string such as 'inductor', got {backend!r}")
    device = torch.device(device)
    if backend == "inductor":
        config = CompileConfig(backend=backend, mode="reduce-overhead" if device.type == "cuda" else "default")
    else:
        config = CompileConfig(backend=backend, mode=None)
    config._compile_all_devices = True
    return config


def resolve_compile(compile, device):
    """`generate`'s compile argument as a transformers CompileConfig, or None for eager decoding.

    False/None: eager. True: `compile_config_for(device)`. A string: that torch.compile backend
    (`compile_config_for(device, backend)`). A `transformers.CompileConfig`: used as given (a copy,
    flagged to compile on every device).
    """
    from transformers import CompileConfig

    if compile is None or compile is False:
        return None
    if compile is True:
        return compile_config_for(device)
    if isinstance(compile, str):
        return compile_config_for(device, compile)
    if isinstance(compile, CompileConfig):
        config = copy.deepcopy(compile)
        config._compile_all_devices = True
        return config
    raise ValueError(
        f"compile must be a bool, a torch.compile backend name or a transformers CompileConfig, "
        f"got {type(compile).__name__}"
    )


# The options that select a generation mode other than greedy/sampling, named in the error. Beam search
# never runs the compiled forward in transformers 5.x (`_beam_search` calls the model directly); assisted
# decoding takes one sequence per call.
_MODE_OPTIONS = {
    "beam_search": "num_beams > 1",
    "beam_sample": "num_beams > 1",
    "group_beam_search": "num_beam_groups > 1",
    "constrained_beam_search": "constraints / force_words_ids",
    "contrastive_search": "penalty_alpha with top_k > 1",
    "assisted_generation": "assistant_model / prompt_lookup_num_tokens / assistant_early_exit / use_mtp",
}


def compile_generation_kwargs(model, generation_kwargs: dict, config, max_prompt_len: int) -> dict:
    """`generation_kwargs` for a compiled decode: static cache, `compile_config`, one cache length for all
    batches. Raises ValueError naming the option when the options cannot run compiled."""
    from transformers.generation import GenerationMode

    kwargs = dict(generation_kwargs)
    for key in ("compile_config", "disable_compile"):
        if key in kwargs:
            raise ValueError(
                f"{key} cannot be combined with compile=...; pass a transformers CompileConfig as compile= instead"
            )
    for key in ("past_key_values", "cache"):
        if kwargs.get(key) is not None:
            raise ValueError(
                f"{key} is not supported with compile=True (the compiled decode step builds its own static cache)"
            )
    if kwargs.get("custom_generate") is not None:
        raise ValueError(
            "custom_generate is not supported with compile=True (only transformers' own greedy "
            "and sampling loop runs the compiled forward)"
        )
    cache_impl = kwargs.get("cache_implementation")
    if cache_impl is not None and cache_impl not in COMPILE_CACHE_IMPLEMENTATIONS:
        raise ValueError(
            f"cache_implementation={cache_impl!r} cannot be compiled; compile=True needs one of "
            f"{COMPILE_CACHE_IMPLEMENTATIONS} (the default is 'static')"
        )
    gen_config = copy.deepcopy(kwargs.get("generation_config") or model.generation_config)
    gen_config.update(**{k: v for k, v in kwargs.items() if k != "generation_config"})
    if gen_config.use_cache is False:
        raise ValueError(
            "use_cache=False is not supported with compile=True (the decode step needs the static KV cache)"
        )
    mode = gen_config.get_generation_mode(kwargs.get("assistant_model"))
    if mode not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
        option = _MODE_OPTIONS.get(str(getattr(mode, "value", mode)), "the generation options")
        raise ValueError(
            f"compile=True supports greedy decoding and sampling only: {option} selects "
            f"{getattr(mode, 'value', mode)}; use compile=False"
        )
    kwargs["cache_implementation"] = cache_impl or "static"
    kwargs["compile_config"] = config
    # One static cache length for every batch of this call (and never shorter than an earlier call's:
    # transformers keeps the longest), so that batches with shorter prompts reuse the compiled graph.
    if gen_config.max_cache_len is None and gen_config.max_new_tokens is not None:
        kwargs["max_cache_len"] = max_prompt_len + int(gen_config.max_new_tokens)
    return kwargs


def generate(
    model,
    tokenizer,
    prompts,
    lam,
    *,
    batch_size: int | None = None,
    chat_template: bool | None = None,
    progress: bool = True,
    compile=False,
    **generation_kwargs,
) -> list[GenerationResult]:
    """Generate for every prompt at its own λ; returns results ordered by prompt, then returned sequence.

    prompts: a string or a list of strings. lam: one number for all prompts, or a list / 1-D tensor
    with one λ per prompt. batch_size: prompts per `model.generate` call (default: all at once).
    chat_template: None applies the tokenizer's chat template when it has one, False never, True
    always (error without one). generation_kwargs go to `model.generate` (e.g. max_new_tokens,
    do_sample, num_beams, num_return_sequences). The prompts are left-padded by the tokenizer
    (`hf.prompts.pad_prompts`); `num_tokens` counts generated tokens up to and including EOS, never padding.

    compile: False (eager decoding), True, a torch.compile backend name, or a transformers CompileConfig.
    When set, the decode step runs compiled with a static KV cache: on CUDA, True means inductor with
    mode="reduce-overhead" (CUDA graphs); on other devices inductor with mode="default". Greedy decoding
    and sampling only (num_beams > 1, assisted decoding, a dynamic cache or use_cache=False are a
    ValueError). λ is updated in place, so later calls with new λ values, the same batch size and no
    longer prompts + max_new_tokens reuse the compiled graph; a new batch size compiles once more.

    Thread-safe per model: concurrent calls on one model run one after the other, each at its own λ, and
    the model's λ from before the call is restored when it returns (pair/lambdas.py, `lambda_lock`).

    Examples::

        >>> import dami_kernels as dk
        >>> from dami_kernels.testbed import testbed_dirs
        >>> model, tok = dk.load_pair_and_tokenizer(*testbed_dirs(), progress=False)
        >>> results = dk.generate(model, tok, ["87305+83759", "87305+83759"], [0.0, 1.0],  # one λ per prompt
        ...                       max_new_tokens=48, do_sample=False, progress=False)
        >>> [(r.lam, r.num_tokens) for r in results]
        [(0.0, 7), (1.0, 42)]
        >>> print(results[0].text)                  # λ = 0: the Instruct side answers at once
        171064
        >>> print(results[1].text)                  # λ = 1: the Thinking side writes its scratchpad first
        <think>05+59+0=064
        73+37+0=110
        8+8+1=17
        </think>171064
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
    positive_int(batch_size, "batch_size")
    for key in ("input_ids", "attention_mask", "inputs_embeds"):
        if key in generation_kwargs:
            raise ValueError(f"{key} is built from the prompts; do not pass it")
    pad_id = pad_token_id(tokenizer)
    generation_kwargs.setdefault("pad_token_id", pad_id)
    eos = eos_ids(model, tokenizer, generation_kwargs)
    expand = generation_expand_size(model, generation_kwargs)
    n_return = int(
        generation_kwargs.get("num_return_sequences")
        or getattr(generation_kwargs.get("generation_config") or model.generation_config, "num_return_sequences", None)
        or 1
    )
    device = state.lam.device
    compile_config = resolve_compile(compile, device)
    encoded = encode_prompts(tokenizer, prompts, chat_template)
    unknown = unknown_characters(tokenizer, prompts, encoded)
    if unknown:
        warnings.warn(
            f"the prompts contain characters the tokenizer does not know: "
            f"{', '.join(repr(c) for c in unknown)}; they are encoded as its unknown token "
            f"{tokenizer.unk_token!r}, so the model reads them as nothing it was trained on",
            UserWarning,
            stacklevel=2,
        )
    if compile_config is not None:
        generation_kwargs = compile_generation_kwargs(
            model, generation_kwargs, compile_config, max(len(e) for e in encoded)
        )
    results: list[GenerationResult] = []
    starts = range(0, len(prompts), batch_size)
    # One call at a time per model (see pair/lambdas.py): other threads' generate/lambda_scope/set_lambda wait.
    with lambda_lock(model), tqdm(total=len(prompts), desc="generating", unit="prompt", disable=not progress) as bar:
        for start in starts:
            idx = list(range(start, min(start + batch_size, len(prompts))))
            ids, mask = pad_prompts(tokenizer, [encoded[i] for i in idx], device)
            lam_b = torch.tensor([lams[i] for i in idx], dtype=torch.float32)
            with torch.no_grad(), lambda_scope(model, lam_b, expand=expand):
                out = model.generate(input_ids=ids, attention_mask=mask, **generation_kwargs)
            new = out[:, ids.shape[1] :].tolist()
            if len(new) != len(idx) * n_return:
                raise RuntimeError(f"generate returned {len(new)} rows for {len(idx)} prompts × {n_return} sequences")
            for row, tokens in enumerate(new):
                i, s = idx[row // n_return], row % n_return
                n = count_generated(tokens, eos)
                text = tokenizer.decode(tokens[:n], skip_special_tokens=True)
                results.append(GenerationResult(i, s, prompts[i], lams[i], text, n, tokens[:n]))
            bar.update(len(idx))
            bar.set_postfix(tokens=sum(r.num_tokens for r in results))
    return results
