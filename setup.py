from setuptools import find_packages, setup

# Dependencies whose NON-public API we use: (oldest supported, newest the tests have passed on). The upper
# bound is the newest tested release: a later one may have changed the internals below, so it is allowed only
# after the suite has passed on it (then raise it here; the `test` extra and .ci/run follow). The `test` extra
# pins the newest (the README's test command, CI step 1); `test-oldest` pins the oldest (CI step 3).
#   transformers, loading: conversion_mapping.get_model_conversion_mapping, core_model_loading (WeightConverter,
#     WeightRenaming, rename_source_key), distributed.DistributedConfig, distributed.tensor_parallel /
#     parallel_utils.ALL_PARALLEL_STYLES, models.auto CONFIG_MAPPING, from_pretrained's loading report,
#     generation.GenerationMode (dami_kernels/hf/, generation.py); serving (continuous batching):
#     ContinuousBatchingLogitsProcessorList, RequestState, model_runner.infer_max_single_request_tokens, the
#     ContinuousBatchingManager's input_queue / logit_processor / output_router / background_thread_status /
#     batch_processor (all in dami_kernels/serving/cb_internals.py). 5.17.0 is the GPU machines' version.
#   lm-eval: DamiLM subclasses HFLM and overrides its internals (tok_batch_encode, _model_generate,
#     _loglikelihood_tokens, _model_call, _detect_batch_size, the _model attribute;
#     dami_kernels/integrations/lm_eval.py). Today one release: 0.4.13 is the oldest and the newest on PyPI.
#   peft: subclasses peft.tuners.lora.layer.Linear / Embedding and uses tuners_utils.check_adapters_to_merge
#     (dami_kernels/hf/peft.py, peft_lora.py).
TESTED = {
    "transformers": ("5.17.0", "5.25.0"),
    "lm-eval[hf]": ("0.4.13", "0.4.13"),
    "peft": ("0.21.0", "0.21.2"),
}


def bounded(name: str) -> str:
    oldest, newest = TESTED[name]
    return f"{name}>={oldest},<={newest}"


def pinned(which: int) -> list[str]:
    """Every bounded dependency pinned at its oldest (0) or newest (1) tested release."""
    return [f"{name}=={versions[which]}" for name, versions in TESTED.items()]


# The test tools, and the pins of the serving tests' clients (tests/test_serve*.py: the official openai client
# against `dami serve`, whose /metrics prometheus_client exports).
TEST_TOOLS = [
    "pytest>=8",
    "hypothesis>=6",
    "pytest-benchmark>=4",
    # The interpreter suite runs the real kernels on the CPU; triton 3.6 (the version on the
    # GPU machines) needs numpy<2.4 in its interpreter.
    "triton==3.6.0",
    "numpy<2.4",
    "fastapi==0.165.0",
    "uvicorn==0.54.0",
    "openai==3.57.0",
    "prometheus_client==0.26.0",
]

setup(
    name="dami_kernels",
    version="0.1.0",
    description="Fused Triton kernels and Hugging Face integration for per-query dynamic model "
    "interpolation between an Instruct and a Thinking checkpoint (DAMI).",
    packages=find_packages(include=["dami_kernels", "dami_kernels.*"]),
    include_package_data=True,
    package_data={"dami_kernels": ["testbed/assets/**/*", "estimators/assets/**/*", "ops/tuned/*.json"]},
    python_requires=">=3.10",
    # torch==2.13.0 is the version CI tests; install it before this package (on a CPU-only machine from
    # PyTorch's CPU wheel index, see the README): a bare `torch` requirement
    # otherwise resolves to a CUDA build of several GB.
    install_requires=[
        "torch>=2.4",
        bounded("transformers"),  # loading and serving internals, see TESTED
        "safetensors>=0.4",
        "accelerate>=1.0",  # transformers needs it to load straight onto a device (load_pair's device/device_map)
        "numpy",
        "tqdm",
        "matplotlib",
        "math-verify>=0.9",  # grades MATH/AIME answers in `dami eval` (evaluation/grading.py)
        "scipy>=1.17.1",  # paired bootstrap CI and exact McNemar (evaluation/stats.py); the tested version
        "scikit-learn>=1.9.1",  # AUROC (evaluation/stats.py); the tested version
    ],
    extras_require={
        "triton": ["triton>=3.6"],
        # `dami lm-eval` and the `dami` model for lm-evaluation-harness (dami_kernels/integrations/lm_eval.py)
        "eval": [bounded("lm-eval[hf]"), "math-verify>=0.9"],
        # LoRA on a pair merges into both sides (dami_kernels/hf/peft.py)
        "peft": [bounded("peft")],
        # `dami serve` (its FastAPI app; prometheus_client for /metrics; openai, the client its docs use)
        "serve": ["fastapi>=0.115", "uvicorn>=0.30", "openai>=1.98", "prometheus_client>=0.20"],
        # The whole suite at the newest allowed releases (transformers==5.25.0, lm-eval[hf]==0.4.13,
        # peft==0.21.2), so a fresh clone is reproducible
        "test": TEST_TOOLS + pinned(1),
        # The same at the oldest supported releases (transformers==5.17.0, lm-eval[hf]==0.4.13, peft==0.21.0)
        "test-oldest": TEST_TOOLS + pinned(0),
        # The linters `make lint` runs (pyproject.toml; CI step 1), pinned so that CI and a developer agree
        "lint": ["ruff==0.17.6", "mypy==2.4.1"],
        # The documentation site (mkdocs.yml; `mkdocs build --strict`, the last step of .ci/run)
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9", "mkdocstrings[python]>=0.26"],
    },
    entry_points={
        "console_scripts": ["dami=dami_kernels.cli:main"],
        # lm-eval's plugin entry points (read by lm-eval releases after 0.4.13; on 0.4.13 use `dami lm-eval`)
        "lm_eval.models": ["dami = dami_kernels.integrations.lm_eval:DamiLM"],
        "lm_eval.filters": ["dami_answer = dami_kernels.integrations.lm_eval:DamiAnswerFilter"],
    },
)
