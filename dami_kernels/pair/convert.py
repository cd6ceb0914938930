"""Turn one in-memory model into a λ-interpolating pair model.

`convert_pair(model_i, model_t)` swaps model_i's layers (walking `named_modules()`) for interpolating
ones whose Thinking side is taken from model_t. `attach_pair_state` and `check_uncovered` are shared
with `load_pair`.
"""
from __future__ import annotations

import types

import torch
from torch import nn

from dami_kernels.hf.compat import check_configs
from dami_kernels.pair.lam import STATE_ATTR
from dami_kernels.hf.peft import enable_peft
from dami_kernels.hf.tensor_parallel import reinstall_tp_forwards
from dami_kernels.modules import LambdaState, covered_names, stored_tensors, swap_modules


def attach_pair_state(model: nn.Module, *, allow_extrapolation: bool, backend, make_t=None, device=None) -> LambdaState:
    """Create the model's one LambdaState (λ=0), swap its layers, and register the state on the root."""
    state = LambdaState(0.0, allow_extrapolation=allow_extrapolation, device=device)
    kwargs = {} if make_t is None else {"make_t": make_t}
    swapped = swap_modules(model, state, backend=backend, **kwargs)
    reinstall_tp_forwards(model, swapped)
    model.add_module(STATE_ATTR, state)
    model.save_pretrained = types.MethodType(_refuse_save_pretrained, model)
    enable_peft()  # PEFT's LoRA on these layers merges into both sides (hf/peft.py; never imports peft)
    return state


def _refuse_save_pretrained(self, *args, **kwargs):
    """A plain HF checkpoint cannot hold a pair: transformers would write the Instruct side plus `*_t`
    tensors and load it back as the plain Instruct model."""
    raise ValueError(
        "save_pretrained cannot save a pair model (a plain Hugging Face checkpoint holds one set of weights; "
        "it would load back as the Instruct model). Use dami_kernels.save_pair(model, out_dir) to save both "
        "sides, or dami_kernels.merge_pair / `dami merge` for a plain checkpoint at one fixed λ"
    )


def uncovered_mismatch(name: str, value_i: torch.Tensor, value_t: torch.Tensor) -> None:
    """Raise if a tensor that no interpolating layer covers differs between the two sides."""
    if not torch.equal(value_i, value_t.to(device=value_i.device, dtype=value_i.dtype)):
        raise ValueError(
            f"tensor {name!r} differs between the checkpoints but no interpolating layer covers it "
            "(its module type is not supported); refusing to pick one side silently"
        )


def convert_pair(model_i: nn.Module, model_t: nn.Module, *, allow_extrapolation: bool = False,
                 backend: str | None = None) -> nn.Module:
    """Make `model_i` (Instruct) a pair model whose Thinking side comes from `model_t`; returns model_i.

    model_t's Parameters are reused as the Thinking slots when dtype and device match (no copy), so
    drop your own reference to model_t afterwards. λ starts at 0. Raises ValueError (before changing
    anything) when the configs, tensor names or shapes differ.
    """
    if hasattr(model_i, "config") and hasattr(model_t, "config"):
        check_configs(model_i.config, model_t.config)
    sd_i, sd_t = stored_tensors(model_i), stored_tensors(model_t)
    if set(sd_i) != set(sd_t):
        name = sorted(set(sd_i) ^ set(sd_t))[0]
        raise ValueError(f"tensor {name!r} exists in only one of the two models")
    for name in sorted(sd_i):
        if sd_i[name].shape != sd_t[name].shape:
            raise ValueError(f"tensor {name!r} has shape {list(sd_i[name].shape)} in model_i but "
                             f"{list(sd_t[name].shape)} in model_t")
    covered = covered_names(model_i)
    for name in sorted(set(sd_i) - covered):
        uncovered_mismatch(name, sd_i[name], sd_t[name])
    params_t = dict(model_t.named_parameters(remove_duplicate=False))

    def make_t(name: str, p: nn.Parameter) -> nn.Parameter:
        src = params_t[name]
        if src.dtype == p.dtype and src.device == p.device:
            return src
        return nn.Parameter(src.detach().to(device=p.device, dtype=p.dtype), requires_grad=p.requires_grad)

    device = next(model_i.parameters()).device
    attach_pair_state(model_i, allow_extrapolation=allow_extrapolation, backend=backend, make_t=make_t, device=device)
    return model_i
