"""Save a pair model as two plain Hugging Face checkpoints: `out_dir/instruct` and `out_dir/thinking`.

Each side is written by transformers' own `save_pretrained` (sharding, tied weights, the reverse
conversion mapping, e.g. fused MoE experts back to per-expert tensors) with that side's state dict, so
`load_pair(out_dir/"instruct", out_dir/"thinking")` reads the same model back. The directory is
published atomically under the same rules as `merge_pair` (`outdir.write_output_dir`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dami_kernels.fs.outdir import write_output_dir
from dami_kernels.modules import pair_slots
from dami_kernels.pair.lambdas import lambda_state
from dami_kernels.pair.load import hf_progress


def side_state_dicts(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(Instruct, Thinking) state dicts under the original model's names; uncovered tensors are shared."""
    sd_i, sd_t = {}, {}
    for name, slot in pair_slots(model).items():
        value = slot.get()
        sd_i[name] = value.detach()
        sd_t[name] = (slot.get_t() if slot.t_attr else value).detach()
    return sd_i, sd_t


def save_pair(
    model: nn.Module,
    out_dir,
    *,
    tokenizer=None,
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    progress: bool = True,
) -> Path:
    """Write `out_dir/instruct` and `out_dir/thinking` (plain HF checkpoints, safetensors); returns out_dir.

    tokenizer: saved into both sides when given. overwrite: replace an out_dir that this project wrote
    before (never a foreign directory). progress: transformers' shard-writing bars. Raises ValueError
    for a model that is not a pair, and for an out_dir that is, contains or lies inside a directory the pair
    was loaded from (`load_pair` records them as `model.dami_source_dirs`): replacing it would delete the
    files the pair came from.
    """
    lambda_state(model)  # a pair model, or a clear error
    sd_i, sd_t = side_state_dicts(model)
    save = type(model).save_pretrained  # the instance's own save_pretrained refuses on purpose
    sources = getattr(model, "dami_source_dirs", ())
    with write_output_dir(out_dir, overwrite=overwrite, inputs=sources, what="pair") as tmp, hf_progress(progress):
        for side, sd in (("instruct", sd_i), ("thinking", sd_t)):
            save(model, str(tmp / side), state_dict=sd, max_shard_size=max_shard_size, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp / side))
    return Path(out_dir)
