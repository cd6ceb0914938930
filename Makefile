# The commands a developer and CI share (.ci/run calls these targets inside the virtual environments it builds).
# Each runs in the active Python environment: install first (README: `pip install torch==2.13.0 &&
# pip install -e ".[test,lint]"`).
PYTHON ?= python
PYTEST = $(PYTHON) -m pytest -q

# The kernel tests, run again under the newest Triton (CI step 2).
KERNEL_TESTS = tests/ops/test_ops_interp_linear.py tests/ops/test_ops_readiness.py tests/ops/test_split_k_in_kernel.py \
  tests/ops/test_launch_memo.py tests/ops/test_moe_ops.py tests/ops/test_moe_launches.py tests/ops/test_triton_direct.py \
  tests/pair/test_hf_triton.py
# The tests of everything that leans on transformers', lm-eval's and peft's internals, run again at their
# oldest supported releases (CI step 3).
INTEGRATION_TESTS = tests/pair/test_hf_pair.py tests/pair/test_hf_families.py tests/pair/test_moe.py \
  tests/pair/test_save_pair.py tests/pair/test_peft.py tests/pair/test_lm_eval.py tests/pair/test_tensor_parallel.py \
  tests/pair/test_merge_pair.py tests/reliability/test_reliability_checkpoint.py tests/serving

.PHONY: test test-fast test-kernels test-integration lint format docs gpu-check

test:  ## the whole suite (the README's test command)
	$(PYTEST)

test-fast:  ## everything but the slow tier: the quick loop while editing
	$(PYTEST) -m "not slow"

test-kernels:
	$(PYTEST) $(KERNEL_TESTS)

test-integration:
	$(PYTEST) $(INTEGRATION_TESTS)

lint:  ## ruff (lint and format check) and mypy on ops/ and modules/ (settings: pyproject.toml)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

format:  ## apply ruff's fixes and formatting
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

docs:  ## the documentation site, every warning an error (broken links and anchors, unresolved API references)
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict -d "$$(mktemp -d)"

gpu-check:  ## on a GPU machine: GPU tests, kernel and generation benchmarks (writes to $$OUT)
	bash scripts/gpu_check.sh
