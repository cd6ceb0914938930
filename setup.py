from setuptools import find_packages, setup

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
        "transformers>=5.17",  # its loading API (conversion mappings, DistributedConfig); CI tests 5.17 and the newest
        "safetensors>=0.4",
        "accelerate>=1.0",  # transformers needs it to load straight onto a device (load_pair's device/device_map)
        "numpy",
        "tqdm",
        "matplotlib",
        "math-verify>=0.9",  # grades MATH/AIME answers in `dami eval` (evaluation/grading.py)
    ],
    extras_require={
        "triton": ["triton>=3.6"],
        # `dami lm-eval` and the `dami` model for lm-evaluation-harness (dami_kernels/integrations/lm_eval.py)
        "eval": ["lm-eval[hf]>=0.4.13", "math-verify>=0.9"],
        # LoRA on a pair merges into both sides (dami_kernels/hf/peft.py)
        "peft": ["peft>=0.21"],
        # `dami serve` (transformers' own server stack and its serving extra)
        "serve": ["fastapi>=0.115", "uvicorn>=0.30", "openai>=1.98"],
        "test": [
            "pytest>=8",
            "hypothesis>=6",
            "pytest-benchmark>=4",
            # The interpreter suite runs the real kernels on the CPU; triton 3.6 (the version on the
            # GPU machines) needs numpy<2.4 in its interpreter.
            "triton==3.6.0",
            "numpy<2.4",
            # tests/test_lm_eval.py runs lm-eval on the testbed pair (the subclass uses HFLM internals)
            "lm-eval[hf]==0.4.13",
            # tests/test_peft.py, tests/test_serve*.py (the official openai client against `dami serve`)
            "peft==0.21.2",
            "fastapi==0.165.0",
            "uvicorn==0.54.0",
            "openai==3.57.0",
        ],
    },
    entry_points={
        "console_scripts": ["dami=dami_kernels.cli:main"],
        # lm-eval's plugin entry points (read by lm-eval releases after 0.4.13; on 0.4.13 use `dami lm-eval`)
        "lm_eval.models": ["dami = dami_kernels.integrations.lm_eval:DamiLM"],
        "lm_eval.filters": ["dami_answer = dami_kernels.integrations.lm_eval:DamiAnswerFilter"],
    },
)
