"""Check a checkpoint's stored tensors against what its config implies, before any weight is read.

The expected tensors come from a skeleton built from the config on the meta device (no memory), and the
stored names are mapped to the skeleton's names with transformers' own conversion mapping for the model
(renamings, and converters such as per-expert tensors fused into one [E, ...] tensor), exactly as
`from_pretrained` maps them. Checks, each a ValueError naming the tensor and the file:
- before the skeleton is built, the config against the stored tensors (`check_config_sizes`): size fields are
  positive integers, num_hidden_layers is the number of stored decoder layers, the embedding is
  vocab_size × hidden_size (a negative size or a million layers never reaches the model code);
- every stored tensor has a place in the model (a stray tensor is refused, not ignored);
- one-to-one tensors have exactly the shape the config implies (no broadcasting: a stored [1] norm gain
  is refused), grouped tensors (fused experts) hold exactly as many elements as their fused target;
- every tensor the model needs is stored, except tied copies (the lm_head of a tied model);
- a tied tensor stored under both names holds the same values on each side (never a silent pick).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import prod

import torch
from transformers import AutoModelForCausalLM

from dami_kernels.hf.checkpoint import Checkpoint
from dami_kernels.modules import stored_tensors
from dami_kernels.validation import is_positive_int


@dataclass
class Expected:
    """The model-side view of a checkpoint: meta skeleton shapes and how stored names map onto them."""

    shapes: dict[str, tuple[int, ...]]  # model state-dict name -> shape (tied duplicates included)
    tied: dict[str, str]  # tied name -> the name it shares storage with (first in named_parameters order)
    target_of: dict[str, str]  # stored name -> model name
    grouped: set[str]  # model names filled by a converter (several stored tensors -> one)


# Config fields that size tensors or the layer stack: each must be a positive integer (or a non-empty list of
# them, for per-layer sizes) where the text config has it and it is not None.
SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "n_routed_experts",
    "n_embd",
    "n_layer",
    "n_head",
    "n_positions",
    "n_inner",
)
# A decoder layer's tensors: "<prefix>.layers.<i>." (or GPT-2 style ".h.<i>.", ".blocks.<i>."); the first match.
_LAYER_NAME = re.compile(r"^((?:.*?\.)?(?:layers|h|blocks))\.(\d+)\.")
_EMBEDDING_SUFFIXES = ("embed_tokens.weight", ".wte.weight", "word_embeddings.weight", "embed_in.weight")


def _positive_sizes(value) -> bool:
    items = value if isinstance(value, (list, tuple)) and value else [value]
    return all(is_positive_int(v) for v in items)


def check_config_sizes(ckpt: Checkpoint) -> None:
    """Check the config against the tensors on disk (headers only) before any model is built from it: one
    ValueError naming the field. Size fields (SIZE_FIELDS) must be positive integers; the decoder layers the
    config declares (num_hidden_layers) must be the layer indices stored (`model.layers.<i>.`), when the names
    have that pattern; the embedding must be vocab_size × hidden_size."""
    f = ckpt.path / "config.json"
    text = ckpt.config.get_text_config() if hasattr(ckpt.config, "get_text_config") else ckpt.config
    for key in SIZE_FIELDS:
        value = getattr(text, key, None)
        if value is not None and not _positive_sizes(value):
            raise ValueError(f"{f}: config field {key!r} must be a positive integer, got {value!r}")
    specs = ckpt.specs()
    n = getattr(text, "num_hidden_layers", None)
    if isinstance(n, int):
        groups: dict[str, set[int]] = {}
        for name in specs:
            m = _LAYER_NAME.match(name)
            if m:
                groups.setdefault(m.group(1), set()).add(int(m.group(2)))
        if groups and n not in {len(v) for v in groups.values()}:
            prefix, idx = max(groups.items(), key=lambda kv: len(kv[1]))
            raise ValueError(
                f"{f}: config field 'num_hidden_layers' is {n}, but the checkpoint stores "
                f"{len(idx)} decoder layers ({prefix}.{min(idx)} to {prefix}.{max(idx)})"
            )
    embeddings = [name for name in specs if name.endswith(_EMBEDDING_SUFFIXES)]
    vocab = getattr(text, "vocab_size", None)
    width_key = next(
        (
            k
            for k in ("word_embed_proj_dim", "embedding_size")  # OPT, ALBERT-style factorized
            if isinstance(getattr(text, k, None), int)
        ),
        "hidden_size",
    )
    width = getattr(text, width_key, None)
    if len(embeddings) == 1 and isinstance(vocab, int) and isinstance(width, int):
        name = embeddings[0]
        shape = specs[name].shape
        if shape != (vocab, width):
            key, value = ("vocab_size", vocab) if not shape or shape[0] != vocab else (width_key, width)
            raise ValueError(
                f"{ckpt.file_of(name)}: tensor {name!r} has shape {list(shape)}, but the config "
                f"implies {[vocab, width]} (config field {key!r} is {value})"
            )


def meta_skeleton(config):
    """The causal-LM model for `config` with every tensor on the meta device (custom code refused)."""
    if getattr(config, "auto_map", None):
        raise ValueError("the config names custom model code (auto_map); custom-code models are not supported")
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot build a causal-LM model from the config ({type(config).__name__}): {err}") from err


def _conversions(model):
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    return renamings, converters


def expected_for(ckpt: Checkpoint) -> Expected:
    """Map `ckpt`'s stored tensor names onto the skeleton its config builds; raises on a stray tensor."""
    from transformers.core_model_loading import rename_source_key

    check_config_sizes(ckpt)  # before the skeleton: a negative size or a million layers must not build one
    model = meta_skeleton(ckpt.config)
    shapes, first_of, tied = {}, {}, {}
    for name, t in stored_tensors(model).items():  # the state-dict names, tied ones included
        shapes[name] = tuple(t.shape)
        if id(t) in first_of:
            tied[name] = first_of[id(t)]
        first_of.setdefault(id(t), name)
    renamings, converters = _conversions(model)
    prefix = getattr(model, "base_model_prefix", None)
    target_of, grouped = {}, set()
    for stored in ckpt.specs():
        target, pattern = rename_source_key(stored, renamings, converters, prefix, shapes)
        if target not in shapes:
            raise ValueError(
                f"{ckpt.file_of(stored)}: tensor {stored!r} has no place in the "
                f"{type(model).__name__} that config.json describes"
            )
        target_of[stored] = target
        if pattern is not None:
            grouped.add(target)
    return Expected(shapes, tied, target_of, grouped)


def check_against_config(ckpt: Checkpoint) -> Expected:
    """Raise ValueError on the first stored tensor whose shape the config does not imply, or a missing one."""
    exp = expected_for(ckpt)
    specs = ckpt.specs()
    group_numel: dict[str, int] = {}
    for stored, target in sorted(exp.target_of.items()):
        shape = specs[stored].shape
        if target in exp.grouped:
            group_numel[target] = group_numel.get(target, 0) + prod(shape)
        elif shape != exp.shapes[target]:
            raise ValueError(
                f"{ckpt.file_of(stored)}: tensor {stored!r} has shape {list(shape)}, but the config "
                f"implies {list(exp.shapes[target])}"
            )
    for target, numel in sorted(group_numel.items()):
        if numel != prod(exp.shapes[target]):
            raise ValueError(
                f"{ckpt.path}: the stored tensors fused into {target!r} hold {numel} values, but the "
                f"config implies shape {list(exp.shapes[target])} ({prod(exp.shapes[target])} values)"
            )
    present = set(exp.target_of.values())
    for name in sorted(exp.shapes):
        if name not in present and exp.tied.get(name) not in present:
            raise ValueError(f"{ckpt.path}: tensor {name!r} is missing (the config implies it)")
    return exp


def check_tied_copies(ckpt: Checkpoint, exp: Expected) -> None:
    """A tied tensor stored under two names must hold the same values: raise, naming it, when they differ."""
    stored_as = {target: stored for stored, target in exp.target_of.items()}
    for name, source in sorted(exp.tied.items()):
        if name in stored_as and source in stored_as:
            a, b = ckpt.get_tensor(stored_as[name]), ckpt.get_tensor(stored_as[source])
            if a.shape != b.shape or not torch.equal(a, b):
                raise ValueError(
                    f"{ckpt.path}: the config ties {name!r} to {source!r}, but the checkpoint stores a different "
                    f"{stored_as[name]!r}; transformers would silently use {source!r}. Untie it in the config "
                    "(tie_word_embeddings=false) or remove the stored copy"
                )
