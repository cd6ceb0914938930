"""Turn one in-memory model into a λ-interpolating pair model.

`convert_pair(model_i, model_t)` swaps model_i's layers (walking `named_modules()`) for interpolating
ones whose Thinking side is taken from model_t (`load_pair` loads both sides, then converts).

Two effects reach beyond the layers swapped (named in `convert_pair`'s and `load_pair`'s docstrings):
- the model INSTANCE's `save_pretrained` is replaced by one that raises ValueError (`attach_pair_state`).
  transformers offers no public way for a model to refuse a plain save: its only refusal is for quantized
  models (`hf_quantizer.is_serializable()`), and a `state_dict` hook would also break `save_pair`, PEFT and
  torch.save. The class and every other instance keep transformers' `save_pretrained` (`save_pair` calls it
  through the class);
- the process-wide torch module-registration hook of `hf.peft.enable_peft` is installed, once per process,
  so that PEFT's LoRA merges into both sides (see hf/peft.py: it acts only when a PEFT module takes a pair
  layer as a submodule, never imports peft, and stays installed).
"""

from __future__ import annotations

import types

import torch
from torch import nn

from dami_kernels.hf.compat import check_configs
from dami_kernels.hf.peft import enable_peft
from dami_kernels.hf.tensor_parallel import reinstall_tp_forwards
from dami_kernels.modules import LambdaState, covered_names, stored_tensors, swap_modules
from dami_kernels.pair.lambdas import STATE_ATTR


def attach_pair_state(model: nn.Module, *, allow_extrapolation: bool, backend, make_t=None, device=None) -> LambdaState:
    """Create the model's one LambdaState (λ=0), swap its layers, and register the state on the root.

    Also replaces this instance's `save_pretrained` by `_refuse_save_pretrained` and calls `enable_peft`
    (the module docstring says why).
    """
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


def convert_pair(
    model_i: nn.Module, model_t: nn.Module, *, allow_extrapolation: bool = False, backend: str | None = None
) -> nn.Module:
    """Make `model_i` (Instruct) a pair model whose Thinking side comes from `model_t`; returns model_i.

    model_t's Parameters are reused as the Thinking slots when dtype and device match (no copy), so
    drop your own reference to model_t afterwards. λ starts at 0. Raises ValueError (before changing
    anything) when the configs, tensor names or shapes differ.

    Effects beyond model_i's layers: `model_i.save_pretrained` (this instance's only) is replaced by one
    that raises ValueError naming `save_pair` and `merge_pair` (a plain checkpoint would load back as the
    Instruct model); and the first pair made in a process installs a process-wide torch
    module-registration hook (`dami_kernels.hf.peft.enable_peft`, kept for the life of the process) that
    makes PEFT's LoRA wrap pair layers with classes merging into both sides; it ignores every other module.
    """
    if hasattr(model_i, "config") and hasattr(model_t, "config"):
        check_configs(model_i.config, model_t.config)
    sd_i, sd_t = stored_tensors(model_i), stored_tensors(model_t)
    if set(sd_i) != set(sd_t):
        name = sorted(set(sd_i) ^ set(sd_t))[0]
        raise ValueError(f"tensor {name!r} exists in only one of the two models")
    for name in sorted(sd_i):
        if sd_i[name].shape != sd_t[name].shape:
            raise ValueError(
                f"tensor {name!r} has shape {list(sd_i[name].shape)} in model_i but {list(sd_t[name].shape)} in model_t"
            )
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
