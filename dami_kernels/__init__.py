"""dami_kernels: run a language model anywhere on the line between an Instruct and a Thinking checkpoint.

θ(λ) = (1-λ)·θ_I + λ·θ_T, with a different λ per sequence in one batch, through fused Triton kernels.
"""
from dami_kernels.ops import interp_linear

__version__ = "0.1.0"

__all__ = ["interp_linear", "__version__"]

# Hugging Face pair API (issue 3), imported lazily so that `import dami_kernels` does not load transformers.
_LAZY_HF = {
    "load_pair": "dami_kernels.hf", "load_pair_and_tokenizer": "dami_kernels.hf", "convert_pair": "dami_kernels.hf",
    "set_lambda": "dami_kernels.hf", "lambda_scope": "dami_kernels.hf", "merge_pair": "dami_kernels.hf",
    "generate": "dami_kernels.generation",
}
__all__ += list(_LAZY_HF)


def __getattr__(name):
    if name in _LAZY_HF:
        import importlib

        return getattr(importlib.import_module(_LAZY_HF[name]), name)
    raise AttributeError(f"module 'dami_kernels' has no attribute {name!r}")

# λ(q) estimators (issue 5), lazily as above.
_LAZY_HF["estimate"] = "dami_kernels.estimators"
__all__ += ["estimate"]
