"""Hugging Face integration: read, check, load, convert, save and merge Instruct/Thinking pairs; set λ; PEFT."""
from dami_kernels.hf.checkpoint import Checkpoint, open_checkpoint
from dami_kernels.hf.compat import check_configs, check_pair
from dami_kernels.hf.convert import convert_pair
from dami_kernels.hf.lam import expand_lambda, generation_expand_size, lambda_scope, lambda_state, set_lambda
from dami_kernels.hf.load import load_pair, load_pair_and_tokenizer
from dami_kernels.hf.merge import merge_pair
from dami_kernels.hf.save import save_pair
from dami_kernels.hf.tokenizer import load_tokenizer

__all__ = [
    "Checkpoint",
    "open_checkpoint",
    "check_configs",
    "check_pair",
    "convert_pair",
    "load_pair",
    "load_pair_and_tokenizer",
    "load_tokenizer",
    "set_lambda",
    "lambda_scope",
    "lambda_state",
    "expand_lambda",
    "generation_expand_size",
    "merge_pair",
    "save_pair",
]
