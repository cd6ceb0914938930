"""Offline merge: write a plain HF checkpoint whose every tensor is (1-λ)·θ_I + λ·θ_T at one fixed λ.

Floating tensors are merged in fp32 and stored in the Instruct checkpoint's dtype; other tensors must
be equal on both sides. Config, generation config and tokenizer files are copied from the Instruct
directory. Everything is written into a temporary directory next to `out_dir`, renamed at the end.
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from dami_kernels.hf.checkpoint import WEIGHT_INDEX_NAMES, WEIGHT_SUFFIXES, open_checkpoint
from dami_kernels.hf.compat import check_pair
from dami_kernels.modules import blend, validate_lambda


def _merge_tensor(name: str, a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    if a.is_floating_point():
        return blend(a, b.to(a.dtype), torch.tensor(lam, dtype=torch.float32)).contiguous()
    if not torch.equal(a, b):
        raise ValueError(f"tensor {name!r} is not floating-point and differs between the checkpoints")
    return a.contiguous()


def merge_pair(instruct_dir, thinking_dir, lam: float, out_dir, *, overwrite: bool = False,
               allow_pickle: bool = False, allow_extrapolation: bool = False, progress: bool = True) -> Path:
    """Merge the pair at λ into `out_dir` (safetensors, sharded like the Instruct side); returns out_dir.

    Raises FileExistsError if out_dir exists and overwrite is False, ValueError for a bad λ or a
    mismatched pair (checked before anything is written).
    """
    if isinstance(lam, torch.Tensor) and lam.dim() != 0:
        raise ValueError("lam for merge_pair must be one number")
    validate_lambda(lam, allow_extrapolation)
    lam = float(lam)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"output directory {out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    ckpt_i = open_checkpoint(instruct_dir, allow_pickle=allow_pickle)
    ckpt_t = open_checkpoint(thinking_dir, allow_pickle=allow_pickle)
    check_pair(ckpt_i, ckpt_t)
    if out_dir.resolve() in (ckpt_i.path.resolve(), ckpt_t.path.resolve()):
        raise ValueError(f"out_dir {out_dir} is one of the input checkpoints")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        n = len(ckpt_i.files)
        names = ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
        weight_map, total_size = {}, 0
        meta = {"format": "pt", "dami_lambda": repr(lam)}
        with tqdm(total=len(ckpt_i.specs()), desc=f"merging at λ={lam:g}", unit="tensor", disable=not progress) as bar:
            for out_name, (_f, tensors) in zip(names, ckpt_i.iter_files()):
                merged = {}
                for name, a in tensors.items():
                    merged[name] = _merge_tensor(name, a, ckpt_t.get_tensor(name), lam)
                    weight_map[name] = out_name
                    total_size += merged[name].numel() * merged[name].element_size()
                    bar.update(1)
                save_file(merged, str(tmp / out_name), metadata=meta)
                del merged, tensors
        if n > 1:
            index = {"metadata": {"total_size": total_size, "dami_lambda": lam}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        for f in ckpt_i.path.iterdir():
            if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name not in WEIGHT_INDEX_NAMES:
                shutil.copy2(f, tmp / f.name)
        if out_dir.exists():
            trash = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            out_dir.rename(trash)
            tmp.rename(out_dir)
            shutil.rmtree(trash)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
