"""PEFT LoRA layers for pair layers: the adapter trains through the interpolating layer and merges into BOTH sides.

A LoRA adapter adds Δx to a pair layer's output, Δ = s·B·A [N, K] (for an embedding: row id of Δᵀ):
y = W(λ)x + Δx with W(λ) = (1−λ)W_I + λW_T. Merging Δ into both sides keeps every λ exact:
(1−λ)(W_I+Δ) + λ(W_T+Δ) = W(λ) + Δ. PEFT's own `lora.Linear`/`lora.Embedding` see an nn.Linear /
nn.Embedding and add Δ to `weight` (the Instruct side) only, which is right at λ=0 alone.

The forward is PEFT's, unchanged: it calls the wrapped InterpLinear/InterpEmbedding (so λ applies, on
either backend) and adds the adapter's output. Only plain LoRA is accepted: the variants (DoRA, aLoRA, ...)
and the initializations that rewrite the base weight (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA) act on
`weight` alone, which on a pair is one side of two.

This module imports peft; `dami_kernels.hf.peft` is the light entry (no peft import).
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Embedding as LoraEmbedding
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import check_adapters_to_merge

from dami_kernels.modules import InterpEmbedding, InterpLinear

# init_lora_weights values that only initialize A and B (the others rewrite the base weight).
PLAIN_INITS = (True, False, "gaussian", "orthogonal")


def check_plain_lora(config, layer_name: str) -> None:
    """Raise ValueError unless `config` asks for plain LoRA that a pair layer can hold."""
    init = config.init_lora_weights
    if not any(init is v or (isinstance(v, str) and init == v) for v in PLAIN_INITS):
        raise ValueError(
            f"LoraConfig(init_lora_weights={init!r}) is not supported on the pair layer {layer_name}: it rewrites "
            f"the base weight, which on a pair is only the Instruct side of two; use one of {list(PLAIN_INITS)}"
        )
    if config.fan_in_fan_out:
        raise ValueError(
            f"LoraConfig(fan_in_fan_out=True) is for transformers' Conv1D; {layer_name} is an "
            "nn.Linear/nn.Embedding (weights [out, in]): set fan_in_fan_out=False"
        )


class PairLoraMixin:
    """Plain LoRA whose merge/unmerge add/subtract Δ (and the LoRA bias) on both sides of the pair layer.

    Goes before PEFT's layer class in the bases; PEFT's own code merges the Instruct side (`weight`,
    `bias`), this class the Thinking side (`weight_t`, `bias_t`) with the same Δ.
    """

    @property
    def lora_variants(self):
        return {(): None}  # no DoRA, aLoRA, ...: PEFT refuses them in resolve_lora_variant

    def resolve_lora_variant(self, *, config, **kwargs):
        try:
            return super().resolve_lora_variant(config=config, **kwargs)
        except ValueError as err:
            raise ValueError(
                f"LoraConfig asks for a LoRA variant that a pair layer ({type(self.get_base_layer()).__name__}) "
                f"cannot hold ({err}); only plain LoRA merges exactly into both sides (use_dora=False, ...)"
            ) from err

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
        check_plain_lora(config, type(self.get_base_layer()).__name__)
        super().update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)

    def _lora_names(self) -> set:
        return set(self.lora_A) | set(self.lora_embedding_A)

    def _thinking_side(self, adapter: str, sign: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W_T ± Δ, b_T ± s·b_B or None): new tensors, the layer is not changed."""
        base = self.get_base_layer()
        w_t = base.weight_t.data + sign * self.get_delta_weight(adapter).to(base.weight_t.dtype)
        b_t = None
        if self.lora_bias.get(adapter, False):
            if base.bias_t is None:
                raise RuntimeError("Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.")
            delta_b = self.lora_B[adapter].bias * self.scaling[adapter]
            b_t = base.bias_t.data + sign * delta_b.to(base.bias_t.dtype)
        return w_t, b_t

    def _write_thinking_side(self, w_t: torch.Tensor, b_t: torch.Tensor | None) -> None:
        base = self.get_base_layer()
        base.weight_t.data.copy_(w_t)  # in place: ties and captured addresses stay valid
        if b_t is not None:
            base.bias_t.data.copy_(b_t)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Merge the active (or the named) adapters into both sides; safe_merge checks both for NaN/inf
        before either side changes."""
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter not in self._lora_names():
                continue
            w_t, b_t = self._thinking_side(adapter, +1.0)
            if safe_merge and not (torch.isfinite(w_t).all() and (b_t is None or torch.isfinite(b_t).all())):
                raise ValueError(
                    f"NaNs detected in the merged Thinking-side weights. The adapter {adapter} seems to be broken"
                )
            super().merge(safe_merge=safe_merge, adapter_names=[adapter])  # the Instruct side, PEFT's code
            self._write_thinking_side(w_t, b_t)

    def unmerge(self) -> None:
        """Subtract every merged adapter from both sides (PEFT's order: last merged first)."""
        if self.merged:
            for adapter in reversed(self.merged_adapters):
                if adapter in self._lora_names():
                    self._write_thinking_side(*self._thinking_side(adapter, -1.0))
        super().unmerge()


class PairLoraLinear(PairLoraMixin, LoraLinear):
    """LoRA on an InterpLinear: y = InterpLinear(x) + s·B·A·x; merge adds Δ = s·B·A to weight and weight_t."""


class PairLoraEmbedding(PairLoraMixin, LoraEmbedding):
    """LoRA on an InterpEmbedding: e = InterpEmbedding(ids) + s·A[:, ids]ᵀBᵀ; merge adds Δ to both tables."""


# PEFT's custom-module mapping: pair layer type -> its LoRA layer.
PAIR_LORA_LAYERS = {InterpLinear: PairLoraLinear, InterpEmbedding: PairLoraEmbedding}
# PEFT's own layer that the registration hook turns into ours when it wraps a pair layer.
PLAIN_TO_PAIR = {(LoraLinear, InterpLinear): PairLoraLinear, (LoraEmbedding, InterpEmbedding): PairLoraEmbedding}


def adopt_wrapper(parent, name: str, child) -> None:
    """Called when the peft module `parent` registers the pair layer `child` as its submodule `name`.

    PEFT's plain LoRA layer getting its `base_layer` becomes our subclass (same state, merge into both
    sides) before it creates the adapter; ours pass; any other PEFT wrapper of a pair layer raises
    (it would read or merge the Instruct side only, or copy the layer away from the model's λ).
    """
    kind = type(parent)
    if isinstance(parent, PairLoraMixin):
        return
    pair_cls = PLAIN_TO_PAIR.get((kind, type(child)))
    if name == "base_layer" and pair_cls is not None:
        parent.__class__ = pair_cls
        return
    raise ValueError(
        f"PEFT's {kind.__name__} cannot wrap the pair layer {type(child).__name__} (as {name!r}): it would "
        "treat it as one plain layer (merge into or copy the Instruct side only, or lose the model's λ). On a "
        "pair model only plain LoRA through `target_modules` on its linear/embedding layers is supported "
        "(not modules_to_save, trainable_token_indices, target_parameters, or other PEFT methods); merge the "
        "pair at a fixed λ first (dk.merge_pair / `dami merge`) for those. The model was partly modified by "
        "PEFT: load it again."
    )
