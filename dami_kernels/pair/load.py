"""Load an Instruct/Thinking pair from two local checkpoint directories as ONE interpolating model.

Both sides load through transformers' own `from_pretrained` (conversion mappings such as fused MoE
experts, sharded safetensors, dtype, device maps, tensor-parallel plans), never a re-implementation of
it. The project's checks come before and after: before any weight is read, the two configs, tensor
names and shapes are compared and every tensor is checked against the shape the config implies
(`compat.check_pair`); after loading, transformers' loading report must be clean, and tensors that no
interpolating layer covers must be equal. The Thinking side's Parameters then become the `*_t` slots of
the Instruct model (no copy), so peak memory is both sides' weights.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from dami_kernels.hf.checkpoint import Checkpoint, open_checkpoint
from dami_kernels.hf.compat import check_pair
from dami_kernels.hf.device import resolve_device
from dami_kernels.hf.finite import check_model_finite
from dami_kernels.hf.tokenizer import load_tokenizer
from dami_kernels.pair.convert import convert_pair
from dami_kernels.validation import is_int

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype, ckpt: Checkpoint) -> torch.dtype:
    """None or "auto" -> the checkpoint's storage dtype; names and torch dtypes are checked."""
    if dtype is None or dtype == "auto":
        return ckpt.float_dtype()
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {sorted(_DTYPES)} or 'auto'")
        return _DTYPES[dtype]
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype={dtype} is not supported; use float32, float16 or bfloat16")
    return dtype


@contextmanager
def hf_progress(enabled: bool):
    """Show transformers' own loading progress bars or not, restoring the global setting after."""
    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


def placement_kwargs(device, device_map, tp_plan) -> dict:
    """from_pretrained keywords for where the weights go: one device, a device map, or a TP plan."""
    given = [k for k, v in (("device", device), ("device_map", device_map), ("tp_plan", tp_plan)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of device, device_map and tp_plan (got {', '.join(given)})")
    if tp_plan is not None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) and "WORLD_SIZE" not in os.environ:
            raise ValueError("tp_plan needs a torch.distributed run: start the program with torchrun")
        try:
            from transformers.distributed import DistributedConfig
        except ImportError:  # transformers before DistributedConfig took the plan
            return {"tp_plan": tp_plan}
        return {"distributed_config": DistributedConfig(tp_plan=tp_plan)}
    if device_map is not None:
        check_device_map(device_map)
        return {"device_map": device_map}
    dev = resolve_device(device)
    return {} if dev.type == "cpu" else {"device_map": dev}  # from_pretrained's default is the CPU


# device_map strings that transformers resolves through accelerate while loading (the devices are only known
# after it); check_one_device checks where such a map put the weights.
_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_ONE_DEVICE = (
    "a pair model keeps one λ buffer and its layers are swapped after loading, so it must sit on one "
    "device without offloading (use device=..., or tp_plan='auto' under torchrun for several GPUs)"
)


def _map_place(value) -> str:
    """One device_map value as a comparable place: "disk", "meta", "cpu", "cuda:0", ... (an int is the index of
    the machine's accelerator, as transformers reads it; a device without an index is the current one)."""
    if isinstance(value, str) and value == "disk":
        return "disk"
    if is_int(value):
        acc = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
        return f"{acc.type if acc is not None else 'cuda'}:{value}"
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device_map value {value!r} is not a device (use e.g. 'cpu', 'cuda:0' or an index)") from None
    if dev.type in ("cpu", "meta"):
        return dev.type
    index = dev.index
    if index is None:
        mod = getattr(torch, dev.type, None)
        index = mod.current_device() if mod is not None and hasattr(mod, "current_device") and mod.is_available() else 0
    return f"{dev.type}:{index}"


def check_device_map(device_map) -> None:
    """Before anything loads: refuse an explicit device_map (a dict, a device name, index or torch.device) that
    names several devices, the meta device or disk offload; a pair must sit on one device (check_one_device
    checks a strategy such as "auto" once transformers has resolved it)."""
    if isinstance(device_map, str) and device_map in _MAP_STRATEGIES:
        return
    values = list(device_map.values()) if isinstance(device_map, dict) else [device_map]
    places = sorted({_map_place(v) for v in values})
    if len(places) > 1 or "meta" in places or "disk" in places:
        raise ValueError(f"device_map places the pair on {places}; {_ONE_DEVICE}")


def load_side(ckpt: Checkpoint, dtype: torch.dtype, placement: dict, *, progress: bool = True) -> nn.Module:
    """One side through `AutoModelForCausalLM.from_pretrained`; a non-empty loading report is a ValueError."""
    with hf_progress(progress):
        model, info = AutoModelForCausalLM.from_pretrained(
            str(ckpt.path),
            dtype=dtype,
            trust_remote_code=False,
            use_safetensors=ckpt.fmt == "safetensors",
            output_loading_info=True,
            **placement,
        )
    for key, what in (
        ("missing_keys", "is missing"),
        ("unexpected_keys", "has no place in the model"),
        ("mismatched_keys", "has the wrong shape"),
        ("error_msgs", "failed to load"),
        ("conversion_errors", "could not be converted"),
    ):
        problems = info.get(key) or ()
        if problems:
            first = sorted(map(str, problems))[0]
            raise ValueError(
                f"{ckpt.path}: transformers reports that tensor {first} {what} ({len(problems)} such problems)"
            )
    return model


def check_one_device(*models: nn.Module) -> None:
    """A pair keeps one λ buffer, so its weights must sit on one device, without offloading hooks: refuse
    a device map that spread them (several devices, "cpu"/"disk" offload), naming the placement."""
    placed = {p.device for m in models for p in m.parameters() if type(p).__name__ != "DTensor"}
    offloaded = any(str(v) == "disk" for m in models for v in (getattr(m, "hf_device_map", None) or {}).values())
    if len(placed) > 1 or offloaded or any(d.type == "meta" for d in placed):
        where = sorted(map(str, placed)) + (["disk"] if offloaded else [])
        raise ValueError(f"the device map spread the pair over {where}; {_ONE_DEVICE}")


def load_pair(
    instruct_dir,
    thinking_dir,
    dtype=None,
    device=None,
    *,
    device_map=None,
    tp_plan=None,
    allow_pickle: bool = False,
    allow_extrapolation: bool = False,
    backend: str | None = None,
    progress: bool = True,
    check_finite: bool = True,
) -> nn.Module:
    """Load two checkpoints of one base model as one λ-interpolating transformers causal-LM model.

    dtype: None/"auto" (the Instruct checkpoint's storage dtype), a torch dtype or its name. Placement
    (at most one): device (default CPU), device_map (as from_pretrained takes it, e.g. "auto"), or
    tp_plan="auto" under torchrun (each rank holds its shard of both sides). allow_pickle: accept
    pickle-only (.bin) checkpoints. allow_extrapolation: accept λ outside [0, 1]. backend: the fused
    op's backend for every layer. λ starts at 0 (the Instruct model); set it with `set_lambda` or
    `lambda_scope`. The generation config is the Instruct one. Raises ValueError, before reading
    weights, when the placement is not one device (a device_map naming several devices, "meta" or "disk";
    a strategy such as "auto" is checked once resolved), the pair does not match or a tensor does not fit
    the config; after loading a side, when a weight holds NaN or ±inf (naming the tensor and the side; one
    read of the loaded weights, hf/finite.py), unless check_finite=False.

    Effects beyond the returned model (those of `convert_pair`): its `save_pretrained` (this instance's
    only) raises ValueError naming `save_pair` and `merge_pair`; and the first pair loaded in a process
    installs a process-wide torch module-registration hook (`dami_kernels.hf.peft.enable_peft`, kept for the
    life of the process) so that PEFT's LoRA on pair layers merges into both sides; other modules are ignored.

    Examples::

        >>> import torch
        >>> import dami_kernels as dk
        >>> from dami_kernels.testbed import testbed_dirs
        >>> from transformers import AutoModelForCausalLM
        >>> instruct_dir, thinking_dir = testbed_dirs()                  # the shipped tiny pair
        >>> model = dk.load_pair(instruct_dir, thinking_dir, progress=False)
        >>> instruct = AutoModelForCausalLM.from_pretrained(instruct_dir)
        >>> ids = torch.tensor([[1, 5, 6, 7]])
        >>> with torch.no_grad():
        ...     at_0 = model(ids).logits                                   # λ starts at 0
        ...     with dk.lambda_scope(model, torch.tensor([0.3])):          # one λ per sequence
        ...         at_03 = model(ids).logits
        >>> torch.equal(at_0, instruct(ids).logits.detach())             # λ = 0 is the Instruct model
        True
        >>> at_03.shape == at_0.shape and not torch.equal(at_03, at_0)
        True
        >>> model.save_pretrained("pair-dir")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: save_pretrained cannot save a pair model ... Use dami_kernels.save_pair(model, out_dir) ...
    """
    placement = placement_kwargs(device, device_map, tp_plan)
    ckpt_i = open_checkpoint(instruct_dir, allow_pickle=allow_pickle)
    ckpt_t = open_checkpoint(thinking_dir, allow_pickle=allow_pickle)
    check_pair(ckpt_i, ckpt_t)
    dtype = resolve_dtype(dtype, ckpt_i)
    model = load_side(ckpt_i, dtype, placement, progress=progress)
    if check_finite:
        check_model_finite(model, "instruct", ckpt_i.path)
    model_t = load_side(ckpt_t, dtype, placement, progress=progress)
    if check_finite:
        check_model_finite(model_t, "thinking", ckpt_t.path)
    check_one_device(model, model_t)
    convert_pair(model, model_t, allow_extrapolation=allow_extrapolation, backend=backend)
    del model_t
    model.eval()
    model.dami_source_dirs = (ckpt_i.path.resolve(), ckpt_t.path.resolve())  # save_pair never writes onto them
    return model


def load_pair_and_tokenizer(instruct_dir, thinking_dir, *, allow_tokenizer_mismatch: bool = False, **kwargs):
    """(model, tokenizer): `load_pair(instruct_dir, thinking_dir, **kwargs)` and the Instruct tokenizer.

    ValueError when the Thinking tokenizer differs from the Instruct one or cannot be loaded (a warning with
    allow_tokenizer_mismatch=True; see `load_tokenizer`), or when the tokenizer has more tokens than the
    model's input embedding has rows (its last ids would fail inside generate). The tokenizers are compared
    before any weight is read.
    """
    for path in (instruct_dir, thinking_dir):  # the directory checks of load_pair first, as it makes them
        open_checkpoint(path, allow_pickle=kwargs.get("allow_pickle", False))
    tok = load_tokenizer(instruct_dir, thinking_dir, allow_tokenizer_mismatch=allow_tokenizer_mismatch)
    model = load_pair(instruct_dir, thinking_dir, **kwargs)
    check_tokenizer_fits(model, tok, instruct_dir)
    return model, tok


def check_tokenizer_fits(model: nn.Module, tokenizer, where) -> None:
    """ValueError when `tokenizer` has more tokens than `model`'s input embedding has rows."""
    emb = model.get_input_embeddings()
    rows = getattr(emb, "num_embeddings", None)
    if rows is None:
        rows = emb.weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's input embedding has "
            f"only {rows} rows (token ids {rows} to {len(tokenizer) - 1} have no embedding)"
        )
