"""Test configuration: run the real Triton kernels through the interpreter when no GPU is present.

TRITON_INTERPRET must be set before any kernel module is imported, so it is set here, at collection.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Every test draws fresh random data, but reproducibly from its own name."""
    import zlib

    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
