"""What is about transformers: read and check checkpoints (`checkpoint`, `compat`, `expected`, `finite`), load a
tokenizer, devices, KV-cache config, prompts, PEFT and tensor parallelism. The pair built from two checkpoints
lives in `dami_kernels.pair`."""

from dami_kernels.hf.checkpoint import Checkpoint, open_checkpoint
from dami_kernels.hf.compat import check_configs, check_pair
from dami_kernels.hf.tokenizer import load_tokenizer

__all__ = [
    "Checkpoint",
    "open_checkpoint",
    "check_configs",
    "check_pair",
    "load_tokenizer",
]
