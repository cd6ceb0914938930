"""Offline merge: write a plain HF checkpoint whose every tensor is (1-λ)·θ_I + λ·θ_T at one fixed λ.

Floating tensors are merged in fp32 and stored in the Instruct checkpoint's dtype; other tensors (integer,
bool) must have the same dtype and values on both sides: they are never cast. Config, generation config
and tokenizer files are copied from the Instruct directory (a symlink among them must point inside it).
The output is written with `write_output_dir` (hf/outdir.py): checks before any work, a temporary directory
beside `out_dir`, an atomic publish that never deletes data it did not write.
"""
from __future__ import annotations

import json
import math
import shutil
from numbers import Real
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from dami_kernels.hf.checkpoint import WEIGHT_INDEX_NAMES, WEIGHT_SUFFIXES, Checkpoint, confined, open_checkpoint
from dami_kernels.hf.compat import check_pair
from dami_kernels.hf.outdir import MARKER, preflight, write_output_dir
from dami_kernels.modules import blend


def merge_lambda(lam, allow_extrapolation: bool) -> float:
    """λ for merge_pair as a Python float, checked in float64 (one number; finite; in [0, 1] unless opted in).

    Checked here rather than in fp32 so that 1.0000001 is not rounded into [0, 1] and messages show the
    value as given (-0.2, not -0.20000000298023224).
    """
    if isinstance(lam, torch.Tensor):
        if lam.dim() != 0:
            raise ValueError("lam for merge_pair must be one number")
        lam = lam.item()
    if isinstance(lam, bool) or not isinstance(lam, Real):
        raise ValueError(f"lam for merge_pair must be one number, got {type(lam).__name__}")
    lam = float(lam)
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam!r}")
    if not allow_extrapolation and not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam!r}; values outside need an explicit opt-in "
                         "(allow_extrapolation=True)")
    return lam


def check_dtypes(ckpt_i: Checkpoint, ckpt_t: Checkpoint) -> None:
    """A tensor that is not floating-point on either side must have one dtype on both (never cast)."""
    si, st = ckpt_i.specs(), ckpt_t.specs()
    for name in sorted(si):
        a, b = si[name].dtype, st[name].dtype
        if (not a.is_floating_point or not b.is_floating_point) and a != b:
            raise ValueError(f"tensor {name!r} is {a} in {ckpt_i.path} but {b} in {ckpt_t.path}; "
                             "a non-floating-point tensor is never cast")


def extra_files(ckpt: Checkpoint) -> list[Path]:
    """The non-weight files to copy (config, tokenizer, ...); a symlink pointing outside the directory is refused."""
    files = []
    for f in sorted(ckpt.path.iterdir()):
        if f.name.endswith(WEIGHT_SUFFIXES) or f.name in WEIGHT_INDEX_NAMES or f.name == MARKER:
            continue
        if f.is_symlink():
            confined(ckpt.path, f.name, f)
        if f.is_file():
            files.append(f)
    return files


def _merge_tensor(name: str, a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    if a.is_floating_point() and b.is_floating_point():
        return blend(a, b.to(a.dtype), torch.tensor(lam, dtype=torch.float32)).contiguous()
    if a.dtype != b.dtype:
        raise ValueError(f"tensor {name!r} is {a.dtype} in one checkpoint and {b.dtype} in the other; "
                         "a non-floating-point tensor is never cast")
    if not torch.equal(a, b):
        raise ValueError(f"tensor {name!r} is not floating-point and differs between the checkpoints")
    return a.contiguous()


def _write_weights(ckpt_i: Checkpoint, ckpt_t: Checkpoint, lam: float, tmp: Path, progress: bool) -> None:
    n = len(ckpt_i.files)
    names = ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    weight_map, total_size = {}, 0
    meta = {"format": "pt", "dami_lambda": repr(lam)}
    with tqdm(total=len(ckpt_i.specs()), desc=f"merging at λ={lam!r}", unit="tensor", disable=not progress) as bar:
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


def merge_pair(instruct_dir, thinking_dir, lam: float, out_dir, *, overwrite: bool = False,
               allow_pickle: bool = False, allow_extrapolation: bool = False, progress: bool = True) -> Path:
    """Merge the pair at λ into `out_dir` (safetensors, sharded like the Instruct side); returns out_dir.

    Before anything is written: ValueError for a bad λ, a mismatched pair, an integer tensor whose dtype
    differs, a symlinked extra file pointing outside the Instruct directory, or an out_dir that is, contains
    or lies inside an input; FileExistsError if out_dir exists and overwrite is False. overwrite=True
    replaces only a directory that dami_kernels wrote (see `write_output_dir`); out_dir holds the complete
    old or the complete new checkpoint at every instant, also if the process is killed.
    """
    lam = merge_lambda(lam, allow_extrapolation)
    out_dir = Path(out_dir)
    inputs = (instruct_dir, thinking_dir)
    preflight(out_dir.absolute(), overwrite=overwrite, inputs=inputs, what="merged checkpoint",
              overwrite_flag="overwrite=True")
    ckpt_i = open_checkpoint(instruct_dir, allow_pickle=allow_pickle)
    ckpt_t = open_checkpoint(thinking_dir, allow_pickle=allow_pickle)
    check_pair(ckpt_i, ckpt_t)
    check_dtypes(ckpt_i, ckpt_t)
    extras = extra_files(ckpt_i)
    with write_output_dir(out_dir, overwrite=overwrite, inputs=inputs, what="merged checkpoint") as tmp:
        _write_weights(ckpt_i, ckpt_t, lam, tmp, progress)
        for f in extras:
            shutil.copyfile(f, tmp / f.name)
    return out_dir
