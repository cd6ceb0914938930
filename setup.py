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
    # Install torch==2.13.0 (a CPU build) before this package: a bare `torch` requirement
    # otherwise resolves to a CUDA build of several GB.
    install_requires=[
        "torch>=2.4",
        "transformers>=4.56",
        "safetensors>=0.4",
        "numpy",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "triton": ["triton>=3.6"],
        "test": [
            "pytest>=8",
            "hypothesis>=6",
            "pytest-benchmark>=4",
            # The interpreter suite runs the real kernels on the CPU; triton 3.6 (the version on the
            # GPU machines) needs numpy<2.4 in its interpreter.
            "triton==3.6.0",
            "numpy<2.4",
        ],
    },
    entry_points={"console_scripts": ["dami=dami_kernels.cli:main"]},
)
