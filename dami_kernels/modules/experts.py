"""Interpolating mixture-of-experts layers: the top-k router and the fused experts.

transformers (5.x) holds a sparse MoE block's router as `<Family>TopKRouter` (a `weight` [E, H], not an
nn.Linear) and its experts as `<Family>Experts` (fused `gate_up_proj` [E, 2I, H] and `down_proj`
[E, H, I]). Both receive the hidden states flattened to [T, H] (T = B·S, sequence after sequence), so
they read λ per token row (`LambdaState.for_rows`: token t of sequence t // S, or per packed row).

Supported families (the same routing and expert math): Qwen3-MoE, Qwen2-MoE (its shared expert and
shared-expert gate are plain nn.Linear that see the flattened rows too: `InterpTokenLinear`) and
Mixtral. Any other router or experts class is refused with a ValueError that names it
(`check_moe_supported`): never a silently un-interpolated tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from dami_kernels.modules.blending import token_rows
from dami_kernels.modules.lambda_state import LambdaBound, LambdaState
from dami_kernels.modules.linear import InterpLinear, ResolvedBackend, same_layout
from dami_kernels.ops.interp_experts.op import interp_experts_rows
from dami_kernels.ops.interp_linear import interp_linear_layer

# Router class name -> whether its routing weights are cast back to the logits' dtype (Qwen) or kept
# in fp32 (Mixtral). Top-k is renormalized when the router's `norm_topk_prob` is set (Mixtral: always).
ROUTER_CLASSES = {"Qwen3MoeTopKRouter": True, "Qwen2MoeTopKRouter": True, "MixtralTopKRouter": False}
EXPERTS_CLASSES = ("Qwen3MoeExperts", "Qwen2MoeExperts", "MixtralExperts")
# transformers' `use_experts_implementation` layout flags that the math above assumes.
_EXPERTS_LAYOUT = {
    "is_concatenated": True,
    "is_transposed": False,
    "has_bias": False,
    "has_gate": True,
    "has_post_expert_norm": False,
}


def _looks_moe(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return name.endswith("experts") or name.endswith("router") or hasattr(module, "is_concatenated")


def is_supported_router(module: nn.Module) -> bool:
    return type(module).__name__ in ROUTER_CLASSES


def is_supported_experts(module: nn.Module) -> bool:
    return type(module).__name__ in EXPERTS_CLASSES


def check_moe_supported(module: nn.Module, name: str = "") -> None:
    """Raise ValueError for an MoE router/experts module whose math `InterpTopKRouter`/`InterpExperts`
    do not implement (an unknown class, or a known class in another weight layout)."""
    if isinstance(module, (InterpTopKRouter, InterpExperts)) or not _looks_moe(module):
        return
    kind = type(module).__name__
    where = f" at {name!r}" if name else ""
    if is_supported_router(module):
        return
    if is_supported_experts(module):
        bad = {k: getattr(module, k) for k, v in _EXPERTS_LAYOUT.items() if getattr(module, k, v) != v}
        if not bad and set(module._parameters) == {"gate_up_proj", "down_proj"}:
            return
        layout = bad or list(module._parameters)
        raise ValueError(
            f"MoE experts module {kind}{where} has an unsupported layout {layout}; supported: "
            "fused gate_up_proj [E, 2I, H] and down_proj [E, H, I] without bias"
        )
    raise ValueError(
        f"unsupported MoE module {kind}{where}: no interpolating layer implements it (supported routers: "
        f"{', '.join(ROUTER_CLASSES)}; experts: {', '.join(EXPERTS_CLASSES)}); refusing to leave its "
        "tensors un-interpolated"
    )


def token_row_linears(model: nn.Module) -> set[str]:
    """Names of the nn.Linear modules inside a sparse MoE block (a module with a supported router as a
    direct child): the block flattens its input to token rows [T, H] before calling them (Qwen2-MoE's
    shared expert and shared-expert gate), so they are swapped for `InterpTokenLinear`."""
    names: set[str] = set()
    for bname, block in model.named_modules():
        if any(is_supported_router(c) for c in block.children()):
            names.update(f"{bname}.{n}" if bname else n for n, m in block.named_modules() if n and type(m) is nn.Linear)
    return names


class InterpTokenLinear(InterpLinear):
    """An InterpLinear whose input is flattened to token rows [T, K] (T = B·S, sequence after
    sequence), as inside a sparse MoE block: λ per row comes from `LambdaState.for_rows`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam, _, uniform = self.lam_state.for_rows(token_rows(x.shape))
        p: dict[str, Any] = self._parameters  # weight and weight_t are never None, bias and bias_t may be
        return interp_linear_layer(
            x, p["weight"], p["weight_t"], lam, p["bias"], p["bias_t"], uniform, self._backend_name(x)
        )


_ROUTER_SUBCLASSES: dict[type, type[InterpTopKRouter]] = {}


class InterpTopKRouter(ResolvedBackend, LambdaBound, nn.Module):
    """Top-k router on the blended logits: logits_t = ((1-λ_t)W_I + λ_t W_T) x_t (θ(λ)'s router), then
    softmax, top-k and (when the original does) renormalization, exactly as the original router.

    ``weight`` [E, H] is the Instruct side (the original Parameter object), ``weight_t`` the Thinking
    side. Input [..., H] (flattened to [T, H]); returns (router_logits [T, E], top-k weights [T, k],
    top-k indices [T, k]). Built by `from_router` as a subclass of the original router class too, so
    transformers' `output_router_logits` recording (an isinstance hook) keeps working.
    """

    top_k: int
    num_experts: int
    hidden_dim: int
    norm_topk_prob: bool
    cast_scores: bool
    weight: nn.Parameter
    weight_t: nn.Parameter

    @classmethod
    def from_router(
        cls, router: nn.Module, lam_state: LambdaState, weight_t: nn.Parameter, backend=None
    ) -> InterpTopKRouter:
        kind = type(router)
        sub = _ROUTER_SUBCLASSES.get(kind)
        if sub is None:
            sub = _ROUTER_SUBCLASSES[kind] = cast(
                "type[InterpTopKRouter]", type(f"Interp{kind.__name__}", (cls, kind), {"__module__": cls.__module__})
            )
        src: Any = router  # a transformers <Family>TopKRouter: its attributes are not typed here
        new = sub.__new__(sub)
        nn.Module.__init__(new)
        new.bind_lambda(lam_state)
        new.backend = backend
        new.top_k = src.top_k
        new.num_experts = src.num_experts
        new.hidden_dim = src.hidden_dim
        new.norm_topk_prob = bool(getattr(src, "norm_topk_prob", True))
        new.cast_scores = ROUTER_CLASSES[kind.__name__]
        new.weight = src.weight
        new.weight_t = same_layout(src.weight, weight_t)
        return new

    def forward(self, hidden_states: torch.Tensor):
        x = hidden_states.reshape(-1, self.hidden_dim)
        lam, _, uniform = self.lam_state.for_rows(x.shape[0])
        p: dict[str, Any] = self._parameters  # weight and weight_t are never None
        logits = interp_linear_layer(x, p["weight"], p["weight_t"], lam, None, None, uniform, self._backend_name(x))
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        top, index = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            top = top / top.sum(dim=-1, keepdim=True)
        if self.cast_scores:
            top = top.to(logits.dtype)
        return logits, top, index

    def extra_repr(self) -> str:
        return (
            f"experts={self.num_experts}, hidden={self.hidden_dim}, top_k={self.top_k}, "
            f"norm_topk_prob={self.norm_topk_prob}, backend={self.backend or 'default'}"
        )


class InterpExperts(ResolvedBackend, LambdaBound, nn.Module):
    """Fused experts whose every token runs its experts at its own λ:
    y_t = Σ_j w_tj · down_e(λ_t)(act(gate_e(λ_t) x_t) * up_e(λ_t) x_t), W(λ) = (1-λ)W_I + λW_T.

    ``gate_up_proj`` [E, 2I, H] / ``down_proj`` [E, H, I] are the Instruct side (the original Parameter
    objects), ``gate_up_proj_t`` / ``down_proj_t`` the Thinking side. forward(hidden_states [T, H],
    top_k_index [T, k], top_k_weights [T, k]) -> [T, H], the original experts' signature.
    """

    source_class: str
    num_experts: int
    hidden_dim: int
    intermediate_dim: int
    act_fn: Callable[[torch.Tensor], torch.Tensor]
    gate_up_proj: nn.Parameter
    gate_up_proj_t: nn.Parameter
    down_proj: nn.Parameter
    down_proj_t: nn.Parameter

    @classmethod
    def from_experts(
        cls, experts: nn.Module, lam_state: LambdaState, gate_up_t: nn.Parameter, down_t: nn.Parameter, backend=None
    ) -> InterpExperts:
        check_moe_supported(experts)
        src: Any = experts  # a transformers <Family>Experts: its attributes are not typed here
        new = cls()
        new.bind_lambda(lam_state)
        new.backend = backend
        new.source_class = type(experts).__name__
        new.num_experts = src.num_experts
        new.hidden_dim = src.hidden_dim
        new.intermediate_dim = src.intermediate_dim
        new.act_fn = src.act_fn
        new.gate_up_proj = src.gate_up_proj
        new.gate_up_proj_t = same_layout(src.gate_up_proj, gate_up_t)
        new.down_proj = src.down_proj
        new.down_proj_t = same_layout(src.down_proj, down_t)
        return new

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        lam, rows_per_lam, uniform = self.lam_state.for_rows(hidden_states.shape[0])
        p = self._parameters
        return interp_experts_rows(
            hidden_states,
            p["gate_up_proj"],
            p["gate_up_proj_t"],
            p["down_proj"],
            p["down_proj_t"],
            top_k_index,
            top_k_weights,
            lam,
            rows_per_lam,
            uniform,
            self.act_fn,
            self._backend_name(hidden_states),
        )

    def extra_repr(self) -> str:
        return (
            f"{self.source_class}: experts={self.num_experts}, hidden={self.hidden_dim}, "
            f"intermediate={self.intermediate_dim}, backend={self.backend or 'default'}"
        )
