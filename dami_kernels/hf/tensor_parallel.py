"""Tensor parallelism for pair models, on transformers' own TP plan over torch.distributed (DTensor).

`from_pretrained(..., tp_plan="auto")` shards every planned parameter of each side as a DTensor and
installs the plan's forward transforms (replicate/shard/all-reduce around the local matmul) on the
planned modules by replacing their `forward`. Swapping a module for an interpolating one drops that
wrapper, so `reinstall_tp_forwards` installs the same style again on the new module. Interpolation is
linear, so it commutes with column- and row-wise sharding: each rank blends its own shards of W_I and
W_T, and the plan's collectives do the rest. Both sides were sharded by the same plan, so their local
shards line up.
"""

from __future__ import annotations

import re

from torch import nn


def tp_mesh(model: nn.Module):
    """The TP device mesh of a model loaded with a tp_plan, or None (transformers 5.17 .. newest)."""
    if (getattr(model, "_tp_size", None) or 1) <= 1:
        return None
    manager = getattr(model, "_mesh_manager", None)  # newer transformers
    if manager is not None:
        return manager.get_mesh("tp")
    mesh = getattr(model, "_device_mesh", None)
    if mesh is None:
        return None
    return mesh["tp"] if mesh.ndim > 1 else mesh


def _styles():
    try:
        from transformers.distributed.parallel_utils import ALL_PARALLEL_STYLES
    except ImportError:  # transformers before 5.2x kept them beside the TP layers
        from transformers.distributed.tensor_parallel import ALL_PARALLEL_STYLES
    return ALL_PARALLEL_STYLES


def _style_for(plan: dict[str, str], name: str) -> str | None:
    generic = re.sub(r"\.\d+\.", ".*.", f".{name}.")[1:-1]
    return plan.get(name) or plan.get(generic)


def reinstall_tp_forwards(model: nn.Module, swapped: list[str]) -> None:
    """Install the TP plan's forward transforms on every swapped module the plan names.

    Raises ValueError for a row-wise module with a bias (the plan adds the Instruct bias after the
    all-reduce, which is wrong for λ > 0).
    """
    mesh = tp_mesh(model)
    if mesh is None:
        return
    styles = _styles()
    plan = getattr(model, "_tp_plan", None) or getattr(model, "tp_plan", None) or {}
    for name in swapped:
        style_name = _style_for(plan, name)
        if style_name is None:
            continue
        module = model.get_submodule(name)
        if "rowwise" in style_name and style_name != "embedding_rowwise" and getattr(module, "bias", None) is not None:
            raise ValueError(f"{name}: a row-wise tensor-parallel layer with a bias is not supported for pairs")
        styles[style_name].install_forward(module, mesh)
