"""Where the shipped testbed checkpoints live (package data under ``dami_kernels/testbed/assets``)."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
METRICS_FILE = ASSETS_DIR / "testbed_metrics.json"
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json")


def testbed_dirs() -> tuple[str, str]:
    """``(instruct_dir, thinking_dir)``: the shipped testbed pair, as plain HF checkpoint directories.

    Raises FileNotFoundError naming the missing file when the assets are not installed; rebuild them
    with ``python scripts/train_testbed.py``.
    """
    dirs = []
    for side in ("instruct", "thinking"):
        d = ASSETS_DIR / side
        for name in _REQUIRED:
            if not (d / name).is_file():
                raise FileNotFoundError(
                    f"testbed checkpoint file missing: {d / name} (rebuild with `python scripts/train_testbed.py`)"
                )
        dirs.append(str(d))
    return dirs[0], dirs[1]
