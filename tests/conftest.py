"""Test configuration: run the real Triton kernels through the interpreter when no GPU is present.

TRITON_INTERPRET must be set before any kernel module is imported, so it is set here, at collection.
Without a GPU the default backend is the torch reference (DAMI_BACKEND=torch), as for a CPU user: the
tests that exercise the kernels ask for backend="triton" explicitly (the interpreter is ~1000x slower,
so whole-model runs through it are kept to the few tests that check the Triton path end to end).

The suite runs with ONE torch intra-op thread ($DAMI_THREADS overrides it), as the `dami` commands do on
the tiny testbed pair: the test tensors are tiny, and on a busy machine torch's threads fight over the
cores (the measurement: bench/NOTES.md, "Threads on the testbed pair"). No test downloads anything: the
Hugging Face libraries run offline.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("DAMI_BACKEND", "torch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(int(os.environ.get("DAMI_THREADS") or 1))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Every test draws fresh random data, but reproducibly from its own name."""
    import zlib

    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread for tests on tiny tensors, even when $DAMI_THREADS raises the suite's default."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
