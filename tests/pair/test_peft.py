"""PEFT LoRA on a pair model: trains on both backends, merges into both sides.

The oracle for merging is the unmerged adapter model itself at the same λ: merged must equal it at
λ ∈ {0, 0.5, 1} and on a mixed-λ batch (fp32 tolerance). `test_plain_peft_merges_one_side` shows that
the same check catches PEFT's default behaviour (Δ merged into the Instruct side only).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dami_kernels as dk
from dami_kernels.hf import peft as dk_peft
from numerics import rel_err
from tiny_pairs import cached_pair

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

from dami_kernels.hf.peft_lora import PairLoraEmbedding, PairLoraLinear  # noqa: E402

TOL = 1e-5
MIXED = [0.0, 0.3, 0.7, 1.0]
ATTN_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(autouse=True)
def _peft_on():
    dk_peft.enable_peft()
    yield


@pytest.fixture
def no_hook(monkeypatch):
    """The process without the registration hook (PEFT's plain behaviour): removed, and load_pair kept from
    reinstalling it; reinstalled afterwards."""
    if dk_peft._HOOK is not None:
        dk_peft._HOOK.remove()
        dk_peft._HOOK = None
    monkeypatch.setattr("dami_kernels.pair.convert.enable_peft", lambda: None)
    yield
    dk_peft.enable_peft()


def pair_model(arch: str = "qwen3", backend: str | None = None):
    pair = cached_pair(arch)
    return dk.load_pair(pair.instruct, pair.thinking, backend=backend, progress=False)


def randomize_lora(model, seed: int, scale: float = 0.2) -> None:
    """Nonzero LoRA factors (B starts at zero), drawn from `seed` in parameter-name order."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:
                p.copy_(scale * torch.randn(p.shape, generator=gen))


def logits(model, ids, lam) -> torch.Tensor:
    dk.set_lambda(model, lam)
    with torch.no_grad():
        return model(input_ids=ids).logits


def ids_for(batch: int, seq: int = 10) -> torch.Tensor:
    return torch.randint(5, 90, (batch, seq))


def lora_model(arch: str, targets, seed: int = 1, **config):
    model = get_peft_model(pair_model(arch), LoraConfig(r=4, lora_alpha=8, target_modules=targets, **config))
    randomize_lora(model, seed)
    return model


def assert_merge_exact(peft_model) -> None:
    """merge_and_unload gives a pair equal to the adapter model at λ ∈ {0, .5, 1} and on a mixed batch;
    the adapter itself changes the output (so the comparison is not vacuous)."""
    ids_one, ids_mixed = ids_for(2), ids_for(len(MIXED))
    cases = [(ids_one, 0.0), (ids_one, 0.5), (ids_one, 1.0), (ids_mixed, torch.tensor(MIXED))]
    before = [logits(peft_model, ids, lam) for ids, lam in cases]
    with peft_model.disable_adapter():
        base = logits(peft_model, ids_mixed, torch.tensor(MIXED))
    assert rel_err(before[-1], base) > 1e-2, "the adapter should change the logits"
    merged = peft_model.merge_and_unload()
    assert not any("lora" in type(m).__name__.lower() for m in merged.modules())
    for (ids, lam), ref in zip(cases, before, strict=True):
        err = rel_err(logits(merged, ids, lam), ref)
        assert err <= TOL, f"λ={lam}: merged pair differs from the adapter model (rel err {err:.2e})"


def test_plain_peft_merges_one_side(no_hook):
    """Without the hook PEFT wraps InterpLinear in its plain lora.Linear and merges into `weight` only:
    right at λ=0, wrong at λ=0.7 (the bug the issue reports)."""
    model = lora_model("qwen3", ["q_proj", "v_proj", "down_proj"])
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(layer) is peft.tuners.lora.Linear
    ids = ids_for(2)
    ref0, ref7 = logits(model, ids, 0.0), logits(model, ids, 0.7)
    merged = model.merge_and_unload()
    assert rel_err(logits(merged, ids, 0.0), ref0) <= TOL
    assert rel_err(logits(merged, ids, 0.7), ref7) > 1e-2


@pytest.mark.parametrize(
    "arch, targets, extra",
    [
        ("qwen3", "all-linear", {}),  # tied embeddings, q/k norms
        ("llama", ATTN_MLP + ["embed_tokens", "lm_head"], {}),  # untied: LoRA on the embedding and lm_head
        ("qwen2", ["q_proj", "k_proj", "v_proj"], {"lora_bias": True}),  # biases: the LoRA bias goes into both sides
    ],
)
def test_merge_and_unload_equals_adapter_model(arch, targets, extra):
    model = lora_model(arch, targets, **extra)
    layers = {type(m) for m in model.modules()}
    assert PairLoraLinear in layers and peft.tuners.lora.Linear not in layers
    assert (PairLoraEmbedding in layers) == ("embed_tokens" in targets)
    assert_merge_exact(model)


def test_merge_unmerge_updates_both_sides_and_restores():
    model = lora_model("llama", ["q_proj", "embed_tokens"])
    q = model.base_model.model.model.layers[1].self_attn.q_proj
    emb = model.base_model.model.model.embed_tokens
    saved = {
        n: (layer.base_layer.weight.detach().clone(), layer.base_layer.weight_t.detach().clone())
        for n, layer in (("q", q), ("emb", emb))
    }
    model.merge_adapter()
    for n, layer in (("q", q), ("emb", emb)):
        delta = layer.get_delta_weight("default")
        w, w_t = saved[n]
        assert torch.allclose(layer.base_layer.weight, w + delta, atol=1e-6)
        assert torch.allclose(layer.base_layer.weight_t, w_t + delta, atol=1e-6)
    model.unmerge_adapter()
    for n, layer in (("q", q), ("emb", emb)):
        w, w_t = saved[n]
        assert torch.allclose(layer.base_layer.weight, w, atol=1e-6)
        assert torch.allclose(layer.base_layer.weight_t, w_t, atol=1e-6)


def test_safe_merge_refuses_nan_before_changing_either_side():
    model = lora_model("qwen3", ["q_proj"])
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    w, w_t = q.base_layer.weight.detach().clone(), q.base_layer.weight_t.detach().clone()
    with torch.no_grad():
        q.lora_B["default"].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaNs detected"):
        q.merge(safe_merge=True)
    assert torch.equal(q.base_layer.weight, w) and torch.equal(q.base_layer.weight_t, w_t)
    assert not q.merged


def test_register_custom_module_route(no_hook):
    """PEFT's own custom-module mechanism, without the hook: the same layers, the same exact merge."""
    config = dk_peft.register_pair_layers(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"]))
    model = get_peft_model(pair_model("qwen3"), config)
    randomize_lora(model, 3)
    assert type(model.base_model.model.model.layers[0].mlp.up_proj) is PairLoraLinear
    assert_merge_exact(model)


@pytest.mark.parametrize(
    "config, match",
    [
        (dict(use_dora=True), "LoRA variant"),
        (dict(init_lora_weights="pissa"), "init_lora_weights='pissa'"),
        (dict(init_lora_weights="olora"), "init_lora_weights='olora'"),
        (dict(modules_to_save=["lm_head"]), "ModulesToSaveWrapper cannot wrap the pair layer InterpLinear"),
        (dict(trainable_token_indices=[5, 6]), "TrainableTokensWrapper cannot wrap the pair layer InterpEmbedding"),
        ("lokr", "cannot wrap the pair layer InterpLinear"),
    ],
)
def test_unsupported_configs_raise(config, match):
    """Everything that would act on one side of the pair only is refused, naming what is wrong."""
    if config == "lokr":
        config = peft.LoKrConfig(r=4, target_modules=["q_proj"])
    else:
        config = LoraConfig(r=4, target_modules=["q_proj"], **config)
    with pytest.raises(ValueError, match=match):
        get_peft_model(pair_model("llama"), config)


def test_register_pair_layers_needs_a_lora_config():
    with pytest.raises(ValueError, match="must be a peft LoraConfig"):
        dk_peft.register_pair_layers({"r": 4})


def lora_grads(model, ids, lam):
    """Loss and the LoRA parameters' gradients {name: grad} of one forward/backward at `lam`."""
    dk.set_lambda(model, lam)
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.slow
def test_training_same_gradients_on_both_backends():
    """LoRA gradients through the pair layers agree between the torch backend and the Triton op's autograd
    (interpreter on the CPU); a few Adam steps lower the loss on both; the pair's weights stay frozen."""
    ids, lam = ids_for(2, 6), torch.tensor([0.25, 0.8])
    targets = ["q_proj", "v_proj", "up_proj", "down_proj"]
    models = {}
    for backend in ("torch", "triton"):
        model = get_peft_model(
            pair_model("qwen3", backend=backend), LoraConfig(r=4, lora_alpha=8, target_modules=targets)
        )
        randomize_lora(model, 7, scale=0.1)
        model.train()
        models[backend] = model
    frozen = {n: p for n, p in models["triton"].named_parameters() if "lora_" not in n}
    assert frozen and not any(p.requires_grad for p in frozen.values())
    trainable = [n for n, p in models["triton"].named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in frozen.items()}

    loss_t, grads_t = lora_grads(models["torch"], ids, lam)
    loss_k, grads_k = lora_grads(models["triton"], ids, lam)
    assert models["triton"].base_model.model.model.layers[0].mlp.down_proj.base_layer._resolved[2] == "triton"
    assert abs(loss_t - loss_k) <= 1e-5 * abs(loss_t)
    assert set(grads_t) == set(grads_k) == set(trainable)
    for name in grads_t:
        assert grads_t[name].abs().sum() > 0, name
        assert rel_err(grads_k[name], grads_t[name]) <= 1e-5, name
    assert all(p.grad is None for p in frozen.values())

    for backend, model in models.items():
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
        losses = []
        for _ in range(3):
            loss, _ = lora_grads(model, ids, lam)
            losses.append(loss)
            opt.step()
        assert losses[-1] < losses[0], (backend, losses)
    for name, p in models["triton"].named_parameters():
        if name in before:
            assert torch.equal(p, before[name]), name


def test_adapter_save_and_load(tmp_path):
    model = lora_model("llama", ["q_proj", "o_proj", "embed_tokens"], seed=5)
    ids, lam = ids_for(len(MIXED)), torch.tensor(MIXED)
    ref = logits(model, ids, lam)
    model.save_pretrained(str(tmp_path / "adapter"), save_embedding_layers=True)  # (LoRA on embed_tokens)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(pair_model("llama"), str(tmp_path / "adapter"))
    assert type(loaded.base_model.model.model.layers[0].self_attn.o_proj) is PairLoraLinear
    assert type(loaded.base_model.model.model.embed_tokens) is PairLoraEmbedding
    assert rel_err(logits(loaded, ids, lam), ref) <= TOL
    assert_merge_exact(loaded)


@pytest.mark.slow
def test_load_pair_enables_peft_in_a_fresh_process():
    """The hook needs no user call: load_pair installs it (checked where nothing else could have)."""
    pair = cached_pair("qwen3")
    code = (
        "import sys, dami_kernels as dk\n"
        "from dami_kernels.hf import peft as p\n"
        "assert not p.peft_enabled()\n"
        f"dk.load_pair({str(pair.instruct)!r}, {str(pair.thinking)!r}, progress=False)\n"
        "print('ENABLED', p.peft_enabled())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ENABLED True" in out.stdout
