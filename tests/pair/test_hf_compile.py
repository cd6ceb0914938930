"""λ updated in place stays valid inside a torch.compile'd model (dynamo, CPU)."""

import torch

import dami_kernels as dk
from numerics import rel_err
from tiny_pairs import cached_pair


def test_compiled_forward_sees_in_place_lambda_updates():
    paths = cached_pair("qwen3")
    model = dk.load_pair(paths.instruct, paths.thinking, backend="torch", progress=False)
    ids = torch.randint(4, 70, (3, 6))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=False)
    outs = []
    for lam in (torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.9, 0.1, 0.4])):
        dk.set_lambda(model, lam)
        with torch.no_grad():
            got = compiled(ids).logits
            ref = model(ids).logits
        assert rel_err(got, ref) < 1e-6
        outs.append(got)
    assert rel_err(outs[0], outs[1]) > 1e-2  # the second λ really changed the compiled result
