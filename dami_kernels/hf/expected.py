"""Check a checkpoint's stored tensors against what its config implies, before any weight is read.

The expected tensors come from a skeleton built from the config on the meta device (no memory), and the
stored names are mapped to the skeleton's names with transformers' own conversion mapping for the model
(renamings, and converters such as per-expert tensors fused into one [E, ...] tensor), exactly as
`from_pretrained` maps them. Checks, each a ValueError naming the tensor and the file:
- every stored tensor has a place in the model (a stray tensor is refused, not ignored);
- one-to-one tensors have exactly the shape the config implies (no broadcasting: a stored [1] norm gain
  is refused), grouped tensors (fused experts) hold exactly as many elements as their fused target;
- every tensor the model needs is stored, except tied copies (the lm_head of a tied model);
- a tied tensor stored under both names holds the same values on each side (never a silent pick).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch
from transformers import AutoModelForCausalLM

from dami_kernels.hf.checkpoint import Checkpoint
from dami_kernels.modules import stored_tensors


@dataclass
class Expected:
    """The model-side view of a checkpoint: meta skeleton shapes and how stored names map onto them."""

    shapes: dict[str, tuple[int, ...]]  # model state-dict name -> shape (tied duplicates included)
    tied: dict[str, str]  # tied name -> the name it shares storage with (first in named_parameters order)
    target_of: dict[str, str]  # stored name -> model name
    grouped: set[str]  # model names filled by a converter (several stored tensors -> one)


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
            raise ValueError(f"{ckpt.file_of(stored)}: tensor {stored!r} has no place in the "
                             f"{type(model).__name__} that config.json describes")
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
            raise ValueError(f"{ckpt.file_of(stored)}: tensor {stored!r} has shape {list(shape)}, but the config "
                             f"implies {list(exp.shapes[target])}")
    for target, numel in sorted(group_numel.items()):
        if numel != prod(exp.shapes[target]):
            raise ValueError(f"{ckpt.path}: the stored tensors fused into {target!r} hold {numel} values, but the "
                             f"config implies shape {list(exp.shapes[target])} ({prod(exp.shapes[target])} values)")
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
