"""PEFT on pair models: LoRA trains through the interpolating layers and merges into BOTH sides.

`get_peft_model(pair_model, LoraConfig(...))` then `merge_and_unload()` gives a pair that equals the
adapter model at every λ: (1−λ)(W_I+Δ) + λ(W_T+Δ) = W(λ) + Δ (the layers: `peft_lora.py`). Without
this, PEFT takes an InterpLinear for a plain nn.Linear and merges Δ into the Instruct side only.

How it switches on, with nothing for the user to remember: `enable_peft()` installs, once per process,
a torch module-registration hook (`torch.nn.modules.module.register_module_module_registration_hook`,
a public torch API; PEFT's code is not patched). `load_pair` and `convert_pair` call it, so every
pair model comes with it. When a PEFT module registers a pair layer as a submodule (a LoRA layer
taking its `base_layer`), the hook makes PEFT's plain `lora.Linear`/`lora.Embedding` our subclass
before the adapter is created, and raises ValueError for any other PEFT wrapper of a pair layer (other
methods, modules_to_save, ...), which would silently handle one side only. The hook costs one
isinstance check per module registration and never imports peft; it does nothing for other models.

PEFT's documented custom-module route works as well, without the hook: `register_pair_layers(config)`
registers the pair layers' LoRA classes on one LoraConfig (`LoraConfig._register_custom_module`).
"""

from __future__ import annotations

from torch.nn.modules.module import register_module_module_registration_hook

from dami_kernels.modules import INTERP_MODULES

_HOOK = None  # the RemovableHandle of the installed hook


def enable_peft() -> None:
    """Make PEFT handle pair layers correctly from now on (idempotent, cheap, does not import peft).

    A process-wide effect: installs torch's global module-registration hook `_on_register` for the rest of
    the process (every module registration in any model runs one isinstance check). `load_pair` and
    `convert_pair` call it and say so in their docstrings.
    """
    global _HOOK
    if _HOOK is None:
        _HOOK = register_module_module_registration_hook(_on_register)


def peft_enabled() -> bool:
    """True when `enable_peft` has installed the hook in this process."""
    return _HOOK is not None


def _on_register(parent, name: str, child):
    """torch's module-registration hook: act only when a PEFT module takes a pair layer as a submodule."""
    if isinstance(child, INTERP_MODULES) and type(parent).__module__.startswith("peft."):
        from dami_kernels.hf.peft_lora import adopt_wrapper

        adopt_wrapper(parent, name, child)
    return None


def register_pair_layers(config):
    """Register the pair layers' LoRA classes on `config` (a peft LoraConfig) through PEFT's custom-module
    mechanism; returns config. Not needed once `enable_peft` ran (load_pair/convert_pair run it)."""
    from peft import LoraConfig

    from dami_kernels.hf.peft_lora import PAIR_LORA_LAYERS

    if not isinstance(config, LoraConfig):
        raise ValueError(f"config must be a peft LoraConfig, got {type(config).__name__}")
    config._register_custom_module(PAIR_LORA_LAYERS)
    return config
