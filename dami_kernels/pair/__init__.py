"""The Instruct/Thinking pair as one model: load (and check), convert, set λ, save, merge.

`load_pair` reads both checkpoints through `hf/` (checkpoint reading, compatibility checks, expected shapes) and
swaps in the interpolating layers of `modules/`; `set_lambda` / `lambda_scope` set λ on the built model;
`save_pair` writes the pair back; `merge_pair` writes one merged checkpoint at a fixed λ.
"""

from dami_kernels.pair.convert import convert_pair
from dami_kernels.pair.lambdas import expand_lambda, generation_expand_size, lambda_scope, lambda_state, set_lambda
from dami_kernels.pair.load import load_pair, load_pair_and_tokenizer
from dami_kernels.pair.merge import merge_pair
from dami_kernels.pair.save import save_pair

__all__ = [
    "convert_pair",
    "load_pair",
    "load_pair_and_tokenizer",
    "set_lambda",
    "lambda_scope",
    "lambda_state",
    "expand_lambda",
    "generation_expand_size",
    "merge_pair",
    "save_pair",
]
