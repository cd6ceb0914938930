"""dami_kernels: run a language model anywhere on the line between an Instruct and a Thinking checkpoint.

θ(λ) = (1-λ)·θ_I + λ·θ_T, with a different λ per sequence in one batch, through fused Triton kernels.
"""

__version__ = "0.1.0"

# Every public name is imported on first use, so that `import dami_kernels` (and `dami --help`) loads
# neither torch nor transformers.
_LAZY = {
    "interp_linear": "dami_kernels.ops",
    # the pair API
    "load_pair": "dami_kernels.pair",
    "load_pair_and_tokenizer": "dami_kernels.pair",
    "convert_pair": "dami_kernels.pair",
    "set_lambda": "dami_kernels.pair",
    "lambda_scope": "dami_kernels.pair",
    "merge_pair": "dami_kernels.pair",
    "save_pair": "dami_kernels.pair",
    "generate": "dami_kernels.generation",
    # λ(q) estimators
    "estimate": "dami_kernels.estimators",
}
__all__ = ["__version__", *_LAZY]


_SUBPACKAGES = (
    "ops",
    "modules",
    "hf",
    "pair",
    "fs",
    "generation",
    "estimators",
    "evaluation",
    "testbed",
    "workflows",
    "integrations",
    "benchmarks",
    "cli",
)


def __getattr__(name):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:  # `dami_kernels.ops` without importing it first, as before the lazy imports
        return importlib.import_module(f"dami_kernels.{name}")
    raise AttributeError(f"module 'dami_kernels' has no attribute {name!r}")
