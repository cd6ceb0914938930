"""Check that two checkpoints are one base model's Instruct and Thinking sides, before any weight is read.

Order of checks: architecture and model type, the config fields that shape tensors (vocabulary first),
the tensor name set, each tensor's shape, then every tensor against what the config implies
(`expected.py`). The first difference raises a ValueError naming it.
Other differing config fields only warn: the model is built from the Instruct config.
"""

from __future__ import annotations

import warnings

from dami_kernels.hf.checkpoint import Checkpoint
from dami_kernels.hf.expected import Expected, check_against_config, check_config_sizes, check_tied_copies

# Config fields that determine tensor shapes or which tensors exist (checked when either side has them).
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "num_experts",
    "num_local_experts",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "decoder_sparse_step",
    "mlp_only_layers",
    "layer_types",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
)
# Fields that legitimately differ between two fine-tunes and need no warning.
IGNORED_FIELDS = {
    "_name_or_path",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "use_cache",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "_commit_hash",
    "architectures",
    "model_type",
}


def _text_config(cfg):
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def check_configs(cfg_i, cfg_t, name_i: str = "instruct", name_t: str = "thinking") -> None:
    """Raise ValueError on the first architecture or tensor-shaping config difference; warn on others."""
    arch_i, arch_t = getattr(cfg_i, "architectures", None), getattr(cfg_t, "architectures", None)
    if cfg_i.model_type != cfg_t.model_type:
        raise ValueError(
            f"config field 'model_type' differs: {name_i}={cfg_i.model_type!r}, {name_t}={cfg_t.model_type!r}"
        )
    if arch_i and arch_t and list(arch_i) != list(arch_t):
        raise ValueError(f"config field 'architectures' differs: {name_i}={arch_i}, {name_t}={arch_t}")
    ti, tt = _text_config(cfg_i), _text_config(cfg_t)
    for key in SHAPE_FIELDS:
        a, b = getattr(ti, key, None), getattr(tt, key, None)
        if a != b:
            raise ValueError(f"config field {key!r} differs: {name_i}={a!r}, {name_t}={b!r}")
    di, dt = ti.to_dict(), tt.to_dict()
    other = sorted(
        k for k in set(di) | set(dt) if k not in IGNORED_FIELDS and k not in SHAPE_FIELDS and di.get(k) != dt.get(k)
    )
    if other:
        warnings.warn(
            f"config fields differ between the checkpoints ({', '.join(other)}); the {name_i} config is used",
            stacklevel=3,
        )


def check_dtypes(ckpt_i: Checkpoint, ckpt_t: Checkpoint) -> None:
    """A tensor that is not floating-point on either side must have one dtype on both (never cast).
    The one dtype check of the pair: `check_pair` runs it for `load_pair` and `merge_pair` alike."""
    si, st = ckpt_i.specs(), ckpt_t.specs()
    for name in sorted(si):
        if name not in st:
            continue  # check_pair names tensors stored on one side only
        a, b = si[name].dtype, st[name].dtype
        if (not a.is_floating_point or not b.is_floating_point) and a != b:
            raise ValueError(
                f"tensor {name!r} is {a} in {ckpt_i.path} but {b} in {ckpt_t.path}; "
                "a non-floating-point tensor is never cast"
            )


def check_pair(ckpt_i: Checkpoint, ckpt_t: Checkpoint) -> Expected:
    """Full compatibility check of two opened checkpoints, reading headers only (plus tied copies):
    configs, tensor names, tensor shapes, dtypes (`check_dtypes`), every tensor against the shape the
    config implies, and tied tensors stored twice. Returns the stored -> model name mapping (`Expected`)."""
    check_configs(ckpt_i.config, ckpt_t.config)
    si, st = ckpt_i.specs(), ckpt_t.specs()
    only_i, only_t = sorted(set(si) - set(st)), sorted(set(st) - set(si))
    if only_i or only_t:
        name, side = (only_i[0], ckpt_i.path) if only_i else (only_t[0], ckpt_t.path)
        raise ValueError(
            f"tensor {name!r} is stored only in {side} ({len(only_i)} tensors only in the instruct "
            f"checkpoint, {len(only_t)} only in the thinking one)"
        )
    for name in sorted(si):
        if si[name].shape != st[name].shape:
            raise ValueError(
                f"tensor {name!r} has shape {list(si[name].shape)} in {ckpt_i.path} but "
                f"{list(st[name].shape)} in {ckpt_t.path}"
            )
    check_dtypes(ckpt_i, ckpt_t)
    check_config_sizes(ckpt_i)  # both configs against their tensors, before a model is built from either
    check_config_sizes(ckpt_t)
    expected = check_against_config(ckpt_i)
    check_tied_copies(ckpt_i, expected)
    check_tied_copies(ckpt_t, expected)
    return expected
