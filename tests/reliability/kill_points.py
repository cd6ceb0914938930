"""Kill points inside `merge_pair` for the kill tests: `install_kill_hooks(stage, at_stage)` makes the running
process call `at_stage()` (print and sleep until the parent's SIGKILL, or SIGKILL itself) at one named stage.

Stages, in the order a merge reaches them:
- "writing": after the first weight file was written into the temporary directory;
- "before_publish": just before the no-replace rename (out_dir absent);
- "before_exchange" / "after_exchange": around the atomic swap of an overwrite;
- "mid_delete": half of the old copy deleted after the swap.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

STAGES = ("writing", "before_publish", "before_exchange", "after_exchange", "mid_delete")


def _content(p: Path):
    """A file's bytes; for safetensors its metadata and tensors (the header's key order is not fixed)."""
    if p.suffix != ".safetensors":
        return p.read_bytes()
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        tensors = {k: (str(t.dtype), tuple(t.shape), t.numpy().tobytes()) for k in f.keys() for t in [f.get_tensor(k)]}
        return f.metadata(), tensors


def tree(path: Path) -> dict | None:
    """{relative path: content} of every file under path (None if path does not exist)."""
    path = Path(path)
    if not path.exists():
        return None
    return {str(p.relative_to(path)): _content(p) for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(out_dir: Path) -> list[str]:
    """Temporary directories of writers on out_dir lying beside it."""
    out_dir = Path(out_dir)
    return sorted(p.name for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.dami-"))


def self_kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill_hooks(stage: str, at_stage) -> None:
    """Patch merge/outdir internals of THIS process so that at_stage() runs at `stage`."""
    import dami_kernels.fs.outdir as outdir
    import dami_kernels.pair.merge as merge

    if stage not in STAGES:
        raise ValueError(stage)
    save_file, noreplace, exchange, remove = (
        merge.save_file,
        outdir._rename_noreplace,
        outdir._rename_exchange,
        outdir._remove_tree,
    )
    swapped = []

    def save_hook(*args, **kwargs):
        save_file(*args, **kwargs)
        if stage == "writing":
            at_stage()

    def noreplace_hook(src, dst):
        if stage == "before_publish":
            at_stage()
        noreplace(src, dst)

    def exchange_hook(src, dst):
        if stage == "before_exchange":
            at_stage()
        exchange(src, dst)
        swapped.append(src)
        if stage == "after_exchange":
            at_stage()

    def remove_hook(path):
        if stage == "mid_delete" and swapped and Path(path) == Path(swapped[-1]):
            files = sorted(p for p in Path(path).rglob("*") if p.is_file())
            for p in files[: max(1, len(files) // 2)]:
                p.unlink()
            at_stage()
        remove(path)

    merge.save_file = save_hook
    outdir._rename_noreplace = noreplace_hook
    outdir._rename_exchange = exchange_hook
    outdir._remove_tree = remove_hook
