"""GPU checks of the pair model (run by scripts/gpu_check.sh): bf16 Triton path, compiled static-cache decode."""

import pytest
import torch

import dami_kernels as dk
from numerics import rel_err
from tiny_pairs import PAD_ID, cached_pair, merged_fp64_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bf16_triton_pair_matches_fp64_merge_per_row():
    paths = cached_pair("qwen3")
    model = dk.load_pair(
        paths.instruct, paths.thinking, dtype=torch.bfloat16, device="cuda", backend="triton", progress=False
    )
    ids = torch.randint(4, 70, (3, 16), device="cuda")
    lams = [0.0, 0.3, 1.0]
    with torch.no_grad(), dk.lambda_scope(model, torch.tensor(lams)):
        out = model(ids).logits.float().cpu()
    for k, lam in enumerate(lams):
        with torch.no_grad():
            ref = merged_fp64_model(paths.instruct, paths.thinking, lam)(ids[k : k + 1].cpu()).logits
        assert rel_err(out[k : k + 1], ref) < 3e-2  # bf16 weights and activations end to end


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_compiled_static_cache_generate_matches_eager_across_lambda_updates(backend):
    paths = cached_pair("qwen3")
    model = dk.load_pair(paths.instruct, paths.thinking, device="cuda", backend=backend, progress=False)
    ids = torch.randint(4, 70, (4, 8), device="cuda")
    kw = dict(
        max_new_tokens=8, do_sample=False, pad_token_id=PAD_ID, eos_token_id=None, attention_mask=torch.ones_like(ids)
    )
    for lam in (torch.tensor([0.0, 0.3, 0.7, 1.0]), torch.tensor([1.0, 0.6, 0.2, 0.0])):
        with torch.no_grad(), dk.lambda_scope(model, lam):
            eager = model.generate(ids, **kw)
            compiled = model.generate(ids, cache_implementation="static", **kw)
        assert torch.equal(eager, compiled)
