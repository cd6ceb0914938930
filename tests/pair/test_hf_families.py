"""Dense families through `load_pair` (transformers' own loading): tiny random pairs saved with
save_pretrained, λ=0.3 logits against an fp64-merged plain model, and a mixed-λ batch against separate runs."""

from __future__ import annotations

import pytest
import torch

import dami_kernels as dk
from dami_kernels.modules import INTERP_MODULES
from numerics import rel_err
from tiny_pairs import cached_pair, merged_fp64_model

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3"]


def _ids(batch=3, length=9, seed=0):
    return torch.randint(5, 90, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    paths = cached_pair(request.param)
    model = dk.load_pair(paths.instruct, paths.thinking, dtype=torch.float32, progress=False)
    return request.param, paths, model


def test_every_tensor_is_interpolated(family):
    arch, _, model = family
    for name, _p in model.named_parameters():
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        assert isinstance(owner, INTERP_MODULES), f"{arch}: {name} sits in a {type(owner).__name__}"


def test_logits_equal_fp64_merge(family):
    arch, paths, model = family
    ids = _ids()
    oracle = merged_fp64_model(paths.instruct, paths.thinking, 0.3)
    with torch.no_grad(), dk.lambda_scope(model, 0.3):
        out = model(ids).logits
        ref = oracle(ids).logits
    assert rel_err(out, ref) < 1e-5, arch


def test_mixed_batch_equals_separate_runs(family):
    arch, _, model = family
    ids, lams = _ids(), [0.0, 0.6, 1.0]
    with torch.no_grad():
        with dk.lambda_scope(model, torch.tensor(lams)):
            mixed = model(ids).logits
        for b, lam in enumerate(lams):
            with dk.lambda_scope(model, lam):
                alone = model(ids[b : b + 1]).logits
            assert rel_err(mixed[b : b + 1], alone) < 1e-5, (arch, lam)


def test_save_pretrained_refuses(family):
    _, _, model = family
    with pytest.raises(ValueError, match="save_pair"):
        model.save_pretrained("/nonexistent/never-written")


def _split_map(elsewhere):
    return {
        "model.embed_tokens": "cpu",
        "model.layers": elsewhere,
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }


@pytest.mark.parametrize(
    "device_map",
    [
        _split_map("meta"),
        _split_map("disk"),
        _split_map("cuda:0"),
        _split_map(0),
        "meta",
        torch.device("meta"),
        {"": "disk"},
    ],
    ids=["meta-layers", "disk-layers", "cpu+cuda", "cpu+index", "meta", "meta-device", "disk"],
)
def test_device_map_over_several_devices_is_refused(device_map, monkeypatch):
    # Refused by our check before transformers is asked to load (transformers 5.25 itself rejects a map naming
    # "meta", with its own message, once the weights are loaded), so no CUDA device is needed for "cpu+cuda".
    from transformers import AutoModelForCausalLM

    def never(*args, **kwargs):
        raise AssertionError("from_pretrained was called before the device map was checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", never)
    paths = cached_pair("llama")
    with pytest.raises(ValueError, match="one device"):
        dk.load_pair(paths.instruct, paths.thinking, device_map=device_map, progress=False)


def test_device_map_on_one_device_loads():
    paths = cached_pair("llama")
    model = dk.load_pair(
        paths.instruct,
        paths.thinking,
        dtype=torch.float32,
        progress=False,
        device_map={
            "model.embed_tokens": "cpu",
            "model.layers": "cpu",
            "model.norm": "cpu",
            "model.rotary_emb": "cpu",
            "lm_head": "cpu",
        },
    )
    assert {p.device.type for p in model.parameters()} == {"cpu"}
