"""Load an Instruct/Thinking pair from two local checkpoint directories into ONE model skeleton.

The skeleton is built from the Instruct config with its parameters on the meta device (buffers such as
rotary tables are real), its layers are swapped for interpolating ones, the parameters are allocated
once on the target device, and both checkpoints are streamed into the Instruct and Thinking slots one
file at a time. Two full models never exist in memory.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from dami_kernels.hf.checkpoint import Checkpoint, open_checkpoint
from dami_kernels.hf.compat import check_pair
from dami_kernels.hf.convert import attach_pair_state, uncovered_mismatch
from dami_kernels.modules import Slot, pair_slots

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


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
def params_on_meta():
    """Build modules with every new nn.Parameter on the meta device (buffers stay real)."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def materialize(model: nn.Module, device: torch.device) -> None:
    """Replace meta parameters by uninitialized ones on `device`; shared (tied) Parameters stay shared."""
    new_by_id: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is None or p.device.type != "meta":
                continue
            if id(p) not in new_by_id:
                new_by_id[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device),
                                                requires_grad=False)
            module._parameters[name] = new_by_id[id(p)]


def _stream_into(ckpt: Checkpoint, slots: dict[str, Slot], side: str, filled: set[int], bar) -> None:
    """Copy every tensor of `ckpt` into its Instruct (side "i") or Thinking ("t") slot."""
    for name, value in ckpt.iter_tensors():
        slot = slots.get(name)
        if slot is None:
            raise ValueError(f"{ckpt.path}: tensor {name!r} has no place in the model built from the config")
        target = slot.get()
        if side == "t":
            if slot.t_attr is None:
                uncovered_mismatch(name, target, value)
                bar.update(1)
                continue
            target = slot.get_t()
        with torch.no_grad():
            target.copy_(value)
        filled.add(id(target))
        bar.update(1)


def load_pair(instruct_dir, thinking_dir, dtype=None, device=None, *, allow_pickle: bool = False,
              allow_extrapolation: bool = False, backend: str | None = None, progress: bool = True) -> nn.Module:
    """Load two checkpoints of one base model as one λ-interpolating transformers causal-LM model.

    dtype: None/"auto" (the Instruct checkpoint's storage dtype), a torch dtype or its name. device:
    where the weights go (default CPU). allow_pickle: accept pickle-only (.bin) checkpoints.
    allow_extrapolation: accept λ outside [0, 1]. backend: the fused op's backend for every layer.
    λ starts at 0 (the Instruct model); set it with `set_lambda` or `lambda_scope`. The generation
    config is the Instruct one. Raises ValueError, before reading weights, when the pair does not match.
    """
    ckpt_i = open_checkpoint(instruct_dir, allow_pickle=allow_pickle)
    ckpt_t = open_checkpoint(thinking_dir, allow_pickle=allow_pickle)
    check_pair(ckpt_i, ckpt_t)
    dtype = resolve_dtype(dtype, ckpt_i)
    device = torch.device(device) if device is not None else torch.device("cpu")
    with params_on_meta():
        model = AutoModelForCausalLM.from_config(ckpt_i.config, dtype=dtype)
    attach_pair_state(model, allow_extrapolation=allow_extrapolation, backend=backend)
    materialize(model, device)
    slots = pair_slots(model)
    filled: set[int] = set()
    total = len(ckpt_i.specs()) + len(ckpt_t.specs())
    with tqdm(total=total, desc="loading pair", unit="tensor", disable=not progress) as bar:
        _stream_into(ckpt_i, slots, "i", filled, bar)
        _stream_into(ckpt_t, slots, "t", filled, bar)
    for name, slot in slots.items():
        for tensor, side in ((slot.get(), ckpt_i.path), (slot.get_t(), ckpt_t.path)):
            if isinstance(tensor, nn.Parameter) and id(tensor) not in filled:
                raise ValueError(f"tensor {name!r} is missing from {side}")
    model.to(device)  # buffers (rotary tables, λ) follow the weights
    if (Path(instruct_dir) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(instruct_dir))
    model.eval()
    return model


def load_tokenizer(instruct_dir, thinking_dir=None):
    """The Instruct tokenizer; warns when the Thinking directory's tokenizer differs from it."""
    tok = AutoTokenizer.from_pretrained(str(instruct_dir))
    if thinking_dir is not None:
        try:
            tok_t = AutoTokenizer.from_pretrained(str(thinking_dir))
        except (OSError, ValueError) as err:
            warnings.warn(f"cannot load the tokenizer of {thinking_dir} to compare ({err}); using the instruct one",
                          stacklevel=2)
            return tok
        diffs = [what for what, a, b in (
            ("vocabulary", tok.get_vocab(), tok_t.get_vocab()),
            ("special tokens", tok.special_tokens_map, tok_t.special_tokens_map),
            ("chat template", getattr(tok, "chat_template", None), getattr(tok_t, "chat_template", None)),
        ) if a != b]
        if diffs:
            warnings.warn(f"the two tokenizers differ ({', '.join(diffs)}); using the instruct one from {instruct_dir}",
                          stacklevel=2)
    return tok


def load_pair_and_tokenizer(instruct_dir, thinking_dir, **kwargs):
    """(model, tokenizer): `load_pair(instruct_dir, thinking_dir, **kwargs)` and the Instruct tokenizer."""
    model = load_pair(instruct_dir, thinking_dir, **kwargs)
    return model, load_tokenizer(instruct_dir, thinking_dir)
