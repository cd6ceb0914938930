"""Swap a model's layers for interpolating ones by walking `named_modules()` (no monkey-patching).

Swapped: exact nn.Linear, nn.Embedding and affine nn.LayerNorm, the RMSNorm classes listed in
`norms.RMSNORM_CLASS_NAMES`, the Gemma (1 + w) norms and scaled embeddings (`gemma.py`), and the MoE
routers and fused experts in `experts.ROUTER_CLASSES` / `experts.EXPERTS_CLASSES` (any other MoE router
or experts class is a ValueError that names it). The new layer keeps the original Parameter objects as
the Instruct side, so tied weights (embeddings/lm_head) stay tied; the Thinking-side Parameter of a
tied weight is created once and shared the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from dami_kernels.modules.embedding import InterpEmbedding
from dami_kernels.modules.experts import (
    InterpExperts,
    InterpTokenLinear,
    InterpTopKRouter,
    check_moe_supported,
    is_supported_experts,
    is_supported_router,
    token_row_linears,
)
from dami_kernels.modules.gemma import (
    InterpOffsetRMSNorm,
    InterpScaledEmbedding,
    is_offset_rmsnorm,
    is_scaled_embedding,
)
from dami_kernels.modules.lambda_state import LambdaState
from dami_kernels.modules.linear import InterpLinear
from dami_kernels.modules.norms import InterpLayerNorm, InterpRMSNorm, is_supported_rmsnorm

INTERP_MODULES = (InterpLinear, InterpEmbedding, InterpRMSNorm, InterpLayerNorm, InterpTopKRouter, InterpExperts)

# make_t(name, instruct_param) -> the Thinking-side Parameter for the tensor called `name`.
MakeT = Callable[[str, nn.Parameter], nn.Parameter]


def empty_like_param(name: str, p: nn.Parameter) -> nn.Parameter:
    """Default Thinking slot: an uninitialized Parameter like the Instruct one (meta stays meta)."""
    return nn.Parameter(torch.empty_like(p), requires_grad=p.requires_grad)


def is_swappable(module: nn.Module) -> bool:
    """True for the layer types `swap_modules` replaces (an unsupported MoE module raises ValueError)."""
    check_moe_supported(module)
    return (
        type(module) in (nn.Linear, nn.Embedding)
        or (type(module) is nn.LayerNorm and module.elementwise_affine)
        or is_supported_rmsnorm(module)
        or is_offset_rmsnorm(module)
        or is_scaled_embedding(module)
        or is_supported_router(module)
        or is_supported_experts(module)
    )


def covered_names(model: nn.Module) -> set[str]:
    """State-dict names of the parameters that `swap_modules` would make interpolating (MoE experts:
    the fused names, e.g. `...mlp.experts.gate_up_proj`). Raises ValueError on an unsupported MoE module."""
    names: set[str] = set()
    for mname, module in model.named_modules(remove_duplicate=False):
        check_moe_supported(module, mname)
        if is_swappable(module) or isinstance(module, INTERP_MODULES):
            names.update(
                f"{mname}.{p}" if mname else p
                for p, v in module._parameters.items()
                if v is not None and not p.endswith("_t")
            )
    return names


def _swap_one(module: nn.Module, prefix: str, state: LambdaState, backend, t_param) -> nn.Module | None:
    # type(module) rather than a local alias: mypy narrows `module` on `type(module) is C`
    if type(module) is nn.Linear:
        bias_t = t_param(prefix + "bias", module.bias) if module.bias is not None else None
        return InterpLinear.from_linear(module, state, t_param(prefix + "weight", module.weight), bias_t, backend)
    if type(module) is nn.Embedding:
        return InterpEmbedding.from_embedding(module, state, t_param(prefix + "weight", module.weight))
    if type(module) is nn.LayerNorm and module.elementwise_affine:
        bias_t = t_param(prefix + "bias", module.bias) if module.bias is not None else None
        return InterpLayerNorm(module, t_param(prefix + "weight", module.weight), bias_t, lam_state=state)
    if is_supported_rmsnorm(module):
        return InterpRMSNorm.from_rmsnorm(module, state, t_param(prefix + "weight", module.weight))
    if is_offset_rmsnorm(module):
        return InterpOffsetRMSNorm.from_rmsnorm(module, state, t_param(prefix + "weight", module.weight))
    if is_scaled_embedding(module):  # an nn.Embedding subclass (gemma.SCALED_EMBEDDING_CLASS_NAMES)
        return InterpScaledEmbedding.from_embedding(
            cast(nn.Embedding, module), state, t_param(prefix + "weight", module.weight)
        )
    if is_supported_router(module):
        return InterpTopKRouter.from_router(module, state, t_param(prefix + "weight", module.weight), backend)
    if is_supported_experts(module):
        return InterpExperts.from_experts(
            module,
            state,
            t_param(prefix + "gate_up_proj", module.gate_up_proj),
            t_param(prefix + "down_proj", module.down_proj),
            backend,
        )
    return None


def swap_modules(
    model: nn.Module, lam_state: LambdaState, *, backend=None, make_t: MakeT = empty_like_param
) -> list[str]:
    """Replace every supported layer of `model` in place; returns the swapped module names.

    Raises ValueError if the model already holds interpolating layers, or (before changing anything)
    if it holds an MoE router or experts module that no interpolating layer implements.
    """
    if any(isinstance(m, INTERP_MODULES) for m in model.modules()):
        raise ValueError("the model already holds interpolating layers (was it converted twice?)")
    for name, module in model.named_modules():
        check_moe_supported(module, name)
    token_linears = token_row_linears(model)
    t_by_id: dict[int, nn.Parameter] = {}

    def t_param(name: str, p: nn.Parameter) -> nn.Parameter:
        if id(p) not in t_by_id:
            t_by_id[id(p)] = make_t(name, p)
        return t_by_id[id(p)]

    todo = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            todo.append((module, child_name, full, child))
    swapped = []
    new: nn.Module | None
    for parent, child_name, full, child in todo:
        if full in token_linears:  # inside an MoE block: the input is flattened to token rows
            bias_t = t_param(full + ".bias", child.bias) if child.bias is not None else None
            new = InterpTokenLinear.from_linear(
                child, lam_state, t_param(full + ".weight", child.weight), bias_t, backend
            )
        else:
            new = _swap_one(child, full + ".", lam_state, backend, t_param)
        if new is not None:
            setattr(parent, child_name, new)
            swapped.append(full)
    return swapped


@dataclass
class Slot:
    """Where a checkpoint tensor goes: `module.<attr>` (Instruct) and `module.<t_attr>` (Thinking, or
    None when no interpolating layer covers it and both sides must be equal)."""

    module: nn.Module
    attr: str
    t_attr: str | None

    def get(self) -> torch.Tensor:
        return getattr(self.module, self.attr)

    def get_t(self) -> torch.Tensor | None:
        return getattr(self.module, self.t_attr) if self.t_attr else None


def pair_slots(model: nn.Module) -> dict[str, Slot]:
    """Map every state-dict name of the original model (parameters and persistent buffers) to its Slot."""
    slots: dict[str, Slot] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mname}." if mname else ""
        interp = isinstance(module, INTERP_MODULES)
        for pname, p in module._parameters.items():
            if p is None or (interp and pname.endswith("_t")):
                continue
            slots[prefix + pname] = Slot(module, pname, pname + "_t" if interp else None)
        for bname, b in module._buffers.items():
            if b is not None and bname not in module._non_persistent_buffers_set:
                slots[prefix + bname] = Slot(module, bname, None)
    return slots


def stored_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> tensor for every parameter (tied names included) and persistent buffer: the state-dict
    names, without `state_dict()`'s detaching and hooks (0.45 s per call on a 1B model)."""
    out: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    for mname, module in model.named_modules(remove_duplicate=False):
        for bname, b in module._buffers.items():
            if b is not None and bname not in module._non_persistent_buffers_set:
                out[f"{mname}.{bname}" if mname else bname] = b
    return out
