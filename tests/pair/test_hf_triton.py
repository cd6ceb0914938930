"""The whole-model equivalence tests through the Triton kernels (TRITON_INTERPRET=1 on the CPU)."""

import pytest
import torch

import dami_kernels as dk
from dami_kernels.modules import InterpLinear
from dami_kernels.ops import triton_available
from numerics import rel_err
from tiny_pairs import PAD_ID, cached_pair, load_side, merged_fp64_model

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


@pytest.fixture(scope="module")
def pair():
    paths = cached_pair("qwen3")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = dk.load_pair(paths.instruct, paths.thinking, backend="triton", device=device, progress=False)
    return paths, model, device


def _logits(model, ids):
    with torch.no_grad():
        return model(ids.to(model.device)).logits.cpu()


def test_triton_backend_is_used(pair):
    _, model, _ = pair
    assert all(m.backend == "triton" for m in model.modules() if isinstance(m, InterpLinear))


def test_triton_endpoints_and_mixed_batch_equal_fp64_merges(pair):
    paths, model, _ = pair
    ids = torch.randint(4, 70, (3, 6))
    lams = [0.0, 0.3, 1.0]
    with dk.lambda_scope(model, torch.tensor(lams)):
        mixed = _logits(model, ids)
    assert rel_err(mixed[0:1], _logits(load_side(paths.instruct), ids[0:1])) < 1e-5
    assert rel_err(mixed[2:3], _logits(load_side(paths.thinking), ids[2:3])) < 1e-5
    ref = _logits(merged_fp64_model(paths.instruct, paths.thinking, 0.3), ids[1:2])
    assert rel_err(mixed[1:2], ref) < 1e-5


def test_triton_mixed_greedy_generate_equals_torch_backend(pair):
    paths, model, device = pair
    ids = torch.randint(4, 70, (3, 5), device=device)
    lam = torch.tensor([0.0, 0.6, 1.0])
    kw = dict(
        max_new_tokens=4, do_sample=False, pad_token_id=PAD_ID, eos_token_id=None, attention_mask=torch.ones_like(ids)
    )
    with torch.no_grad(), dk.lambda_scope(model, lam):
        fused = model.generate(ids, **kw)
    ref_model = dk.load_pair(paths.instruct, paths.thinking, backend="torch", device=device, progress=False)
    with torch.no_grad(), dk.lambda_scope(ref_model, lam):
        unfused = ref_model.generate(ids, **kw)
    assert torch.equal(fused, unfused)
