"""λ per packed token row (LambdaState.set_rows, the layers in per-row mode) and the server's λ rules,
without a server: fp64 math, the per-sequence path, and the engine extension on the testbed pair."""

import math

import pytest
import torch
from torch import nn

from dami_kernels.modules import InterpEmbedding, InterpLayerNorm, InterpLinear, InterpRMSNorm, LambdaState
from dami_kernels.modules.lambda_state import RowLambda
from dami_kernels.ops import interp_linear_fp64
from dami_kernels.serving.lambda_policy import LambdaPolicy, RequestError
from numerics import rel_err


def _linear(state, bias=True, k=24, n=40, backend="torch"):
    lin = nn.Linear(k, n, bias=bias)
    return InterpLinear.from_linear(
        lin, state, nn.Parameter(torch.randn(n, k)), nn.Parameter(torch.randn(n)) if bias else None, backend=backend
    )


# ---- LambdaState in per-row mode ----


def test_set_rows_get_set_roundtrip_and_fixed_address():
    state = LambdaState(0.3)
    state.reserve_rows(16)
    ptr, out_ptr = state.buf.data_ptr(), state.out_buf.data_ptr()
    rows, out = torch.rand(7), torch.rand(3)
    state.set_rows(rows, out)
    assert state.per_row and not state.per_sequence and state.n == 7 and state.n_out == 3
    assert state.buf.data_ptr() == ptr and state.out_buf.data_ptr() == out_ptr  # no reallocation
    saved = state.get()
    assert isinstance(saved, RowLambda) and torch.equal(saved.rows, rows) and torch.equal(saved.out, out)
    state.set(torch.tensor([0.1, 0.9]))  # e.g. an estimator's lambda_scope inside a paused engine
    assert state.per_sequence and not state.per_row
    state.set(saved)  # ... restored on exit
    assert state.per_row and torch.equal(state.lam, rows) and torch.equal(state.out_buf[:3], out)
    assert state.buf.data_ptr() == ptr
    assert "per_row" in repr(state)


def test_for_rows_padding_rows_read_zero_and_short_inputs_are_errors():
    state = LambdaState(0.0)
    state.reserve_rows(10)
    rows = torch.rand(6) * 0.5 + 0.25
    state.set_rows(rows)
    lam, per, uniform = state.for_rows(6)
    assert per == 1 and torch.equal(lam, rows) and uniform is None
    lam, _, uniform = state.for_rows(8)  # the engine padded the packed batch: rows past 6 read λ = 0
    assert torch.equal(lam[:6], rows) and torch.equal(lam[6:], torch.zeros(2)) and uniform is None
    with pytest.raises(ValueError, match="6 packed token rows.*got 5 rows"):
        state.for_rows(5)
    with pytest.raises(ValueError, match="got 11 rows"):
        state.for_rows(11)
    with pytest.raises(ValueError, match="for_rows"):
        state.for_layer(1)  # a layer that only knows the per-sequence API must not get a wrong λ silently


def test_uniform_rows_take_the_host_fast_path_and_output_rows_count():
    state = LambdaState(0.0)
    state.set_rows([0.0] * 5, [0.0, 0.0])
    assert state.for_rows(5)[2] == 0.0 and state.for_rows(2, output=True)[2] == 0.0
    state.set_rows([0.0] * 5, [1.0])  # the kept rows differ: no shared λ
    assert state.uniform is None


@pytest.mark.parametrize("bad", [[0.2, float("nan")], [1.5], torch.zeros(2, 2), [], 0.5])
def test_set_rows_rejects_bad_values(bad):
    state = LambdaState(0.5)
    with pytest.raises(ValueError, match="rows"):
        state.set_rows(bad)
    assert state.get() == 0.5


def test_for_rows_per_sequence_and_scalar_forms():
    state = LambdaState(torch.tensor([0.2, 0.7]))
    lam, per, _ = state.for_rows(10)  # 2 sequences of 5 tokens, flattened
    assert per == 5 and torch.equal(lam, torch.tensor([0.2, 0.7]))
    with pytest.raises(ValueError, match="not a multiple of 2"):
        state.for_rows(7)
    state.set(0.4)
    lam, per, uniform = state.for_rows(9)
    assert lam.shape == (1,) and per == 9 and math.isclose(uniform, 0.4, rel_tol=1e-6)


# ---- layers: packed rows with per-row λ == the per-sequence batch == fp64 math ----


@pytest.mark.parametrize("bias", [False, True])
def test_linear_per_row_matches_fp64_and_per_sequence(bias):
    state = LambdaState(0.0)
    layer = _linear(state, bias)
    b, t = 3, 5
    lam_seq = torch.rand(b)
    x = torch.randn(b, t, 24)
    state.set(lam_seq)
    y_seq = layer(x)
    state.set_rows(lam_seq.repeat_interleave(t))
    y_packed = layer(x.reshape(1, b * t, 24))  # the engine's [1, T, K]
    assert torch.allclose(y_packed.reshape(b, t, -1), y_seq, rtol=1e-5, atol=1e-5)
    lam_rows = torch.rand(b * t)  # every row its own λ
    state.set_rows(lam_rows)
    ref = interp_linear_fp64(x.reshape(b * t, 24), layer.weight, layer.weight_t, lam_rows, layer.bias, layer.bias_t)
    assert rel_err(layer(x.reshape(1, b * t, 24)).reshape(b * t, -1), ref) < 1e-5


def test_linear_per_row_on_triton_interpreter():
    state = LambdaState(0.0)
    layer = _linear(state, backend="triton")
    x = torch.randn(1, 9, 24)
    lam_rows = torch.rand(9)
    state.set_rows(lam_rows)
    ref = interp_linear_fp64(x[0], layer.weight, layer.weight_t, lam_rows, layer.bias, layer.bias_t)
    assert rel_err(layer(x)[0], ref) < 1e-5


def test_output_layer_reads_the_kept_rows():
    state = LambdaState(0.0)
    head = _linear(state, bias=False)
    head.output_rows = True
    rows, kept = torch.rand(8), torch.tensor([0.9, 0.1])
    state.set_rows(rows, kept)
    h = torch.randn(1, 2, 24)  # the hidden states of the 2 kept logits rows
    ref = interp_linear_fp64(h[0], head.weight, head.weight_t, kept)
    assert rel_err(head(h)[0], ref) < 1e-5
    body = _linear(state, bias=False)  # every other layer reads the token rows
    x = torch.randn(1, 8, 24)
    assert rel_err(body(x)[0], interp_linear_fp64(x[0], body.weight, body.weight_t, rows)) < 1e-5


def test_embedding_and_norms_per_row():
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    state = LambdaState(0.0)
    t = 6
    lam = torch.rand(t)
    state.set_rows(lam)
    lv = lam.double()
    emb = nn.Embedding(50, 16)
    e_layer = InterpEmbedding.from_embedding(emb, state, nn.Parameter(torch.randn(50, 16)))
    ids = torch.randint(0, 50, (1, t))
    ref = (1 - lv[:, None]) * emb.weight.double()[ids[0]] + lv[:, None] * e_layer.weight_t.double()[ids[0]]
    assert rel_err(e_layer(ids)[0], ref) < 1e-6

    norm = Qwen3RMSNorm(8, eps=1e-6)
    nn.init.normal_(norm.weight, 1.0, 0.3)
    n_layer = InterpRMSNorm.from_rmsnorm(norm, state, nn.Parameter(1 + 0.3 * torch.randn(8)))
    x = torch.randn(1, t, 4, 8)  # q_norm: [1, T, heads, D], λ per token
    xd = x.double()
    h = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6)
    g = (1 - lv.view(1, t, 1, 1)) * norm.weight.double() + lv.view(1, t, 1, 1) * n_layer.weight_t.double()
    assert rel_err(n_layer(x), g * h) < 1e-6

    ln = nn.LayerNorm(12)
    nn.init.normal_(ln.weight)
    nn.init.normal_(ln.bias)
    l_layer = InterpLayerNorm(ln, nn.Parameter(torch.randn(12)), nn.Parameter(torch.randn(12)), lam_state=state)
    x = torch.randn(1, t, 12)
    hl = torch.nn.functional.layer_norm(x.double(), (12,), eps=ln.eps)
    lw = lv.view(1, t, 1)
    ref = hl * ((1 - lw) * ln.weight.double() + lw * l_layer.weight_t.double()) + (
        (1 - lw) * ln.bias.double() + lw * l_layer.bias_t.double()
    )
    assert rel_err(l_layer(x), ref) < 1e-6


# ---- the server's λ rules ----


def test_policy_parses_lam_effort_auto_and_default():
    policy = LambdaPolicy(0.25, {"low": 0.1, "medium": 0.4, "high": 0.9}, has_estimator=True)
    body = {"lam": 0.3, "messages": []}
    choice = policy.parse(body)
    assert (choice.lam, choice.source) == (0.3, "request") and "lam" not in body
    choice = policy.parse({"reasoning_effort": "high"})
    assert (choice.lam, choice.source) == (0.9, "reasoning_effort:high")
    assert policy.parse({"lam": "auto"}).auto
    assert (policy.parse({}).lam, policy.parse({}).source) == (0.25, "default")
    assert policy.parse({"lam": None, "max_tokens": 5}).max_tokens_field == "max_tokens"
    assert policy.parse({"lam": 1}).lam == 1.0


@pytest.mark.parametrize(
    "body, field",
    [
        ({"lam": 1.5}, "lam"),
        ({"lam": -0.1}, "lam"),
        ({"lam": float("nan")}, "lam"),
        ({"lam": float("inf")}, "lam"),
        ({"lam": "fast"}, "lam"),
        ({"lam": "0.3"}, "lam"),
        ({"lam": True}, "lam"),
        ({"lam": [0.1]}, "lam"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"reasoning_effort": 2}, "reasoning_effort"),
        ({"lam": 0.2, "reasoning_effort": "low"}, "lam"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"lam": 10**400}, "lam"),
        ({"lam": "x" * 500}, "lam"),
        ({"max_completion_tokens": 2.5}, "max_completion_tokens"),
    ],
)
def test_policy_bad_requests_name_the_field(body, field):
    policy = LambdaPolicy(0.0, has_estimator=True)
    with pytest.raises(RequestError) as err:
        policy.parse(dict(body))
    assert err.value.field == field and str(err.value).startswith(f"{field}: ") and "\n" not in str(err.value)


def test_policy_auto_needs_an_estimator_and_checks_its_own_values():
    with pytest.raises(RequestError, match="estimator"):
        LambdaPolicy(0.0).parse({"lam": "auto"})
    with pytest.raises(ValueError, match="estimator"):
        LambdaPolicy("auto")
    with pytest.raises(ValueError, match=r"reasoning_effort level 'high'.*\[0, 1\]"):
        LambdaPolicy(0.0, {"high": 1.2})
    assert LambdaPolicy(0.0, {"high": 1.2}, allow_extrapolation=True).parse({"lam": 1.3}).lam == 1.3


def test_policy_checks_lambda_in_the_engine_s_fp32():
    """1e308 passes a float64 check but is inf in the fp32 λ rows: refused from a request and from every flag,
    with extrapolation allowed too; the largest finite fp32 is accepted."""
    policy = LambdaPolicy(0.0, allow_extrapolation=True)
    for lam in (1.7976931348623157e308, -1e39, 10**39):
        with pytest.raises(RequestError, match="float32") as err:
            policy.parse({"lam": lam})
        assert err.value.field == "lam" and len(str(err.value)) < 200
    assert policy.parse({"lam": 3.4e38}).lam == 3.4e38
    with pytest.raises(ValueError, match=r"reasoning_effort level 'high'.*float32"):
        LambdaPolicy(0.0, {"high": 1e308}, allow_extrapolation=True)
    with pytest.raises(ValueError, match="default λ.*float32"):
        LambdaPolicy(1e308, allow_extrapolation=True)


# ---- the engine extension, without HTTP ----


def test_engine_steps_run_each_request_at_its_lambda():
    """transformers' continuous-batching engine with the λ rows attached: 8 requests at 8 λ values, added
    together, give exactly dk.generate's greedy tokens, and steps mix λ values. λ travels in the engine's
    own request state (the registry entries are dropped right after add_request)."""
    import dami_kernels as dk
    from dami_kernels.hf.prompts import encode_prompts
    from dami_kernels.pair import load_pair_and_tokenizer
    from dami_kernels.serving.cb_internals import attach_lambda_rows, cb_config
    from dami_kernels.serving.lambda_policy import RequestLambdas, ServedLambda
    from dami_kernels.testbed import testbed_dirs

    model, tok = load_pair_and_tokenizer(*testbed_dirs(), progress=False)
    prompts = ["12+34", "5+7-3", "88-12", "3+4", "45-12+7", "9+9", "77-33", "1+2+3"]
    lams = [0.0, 1.0, 0.5, 0.3, 0.8, 0.6, 0.45, 1.0]
    ref = dk.generate(model, tok, prompts, lams, max_new_tokens=48, progress=False)
    book = RequestLambdas()
    config = cb_config(
        use_async_batching=False, num_blocks=32, max_batch_tokens=256, page_size=32, allow_block_sharing=False
    )
    cb = model.init_continuous_batching(generation_config=model.generation_config, continuous_batching_config=config)
    rows = attach_lambda_rows(cb, model, book)
    assert model.get_output_embeddings().output_rows  # the engine keeps only the logits rows
    cb.start()
    try:
        for k, (ids, lam) in enumerate(zip(encode_prompts(tok, prompts), lams, strict=True)):
            book.register(f"r{k}", ServedLambda(lam, "request"))
            cb.add_request(ids, request_id=f"r{k}", max_new_tokens=48)
            book.release(f"r{k}")  # the request state carries its λ from here on (as on every TP rank)
        out = {}
        while len(out) < len(prompts):
            result = cb.get_result(timeout=60)
            assert result is not None, "the engine stopped answering"
            out[result.request_id] = result
    finally:
        cb.stop(block=True)
    for k, r in enumerate(ref):
        assert out[f"r{k}"].error is None
        assert out[f"r{k}"].generated_tokens == r.token_ids, (k, lams[k])
    assert rows.mixed_steps > 0 and rows.steps >= max(r.num_tokens for r in ref)
    with pytest.raises(ValueError, match="async batching"):
        attach_lambda_rows(
            model.init_continuous_batching(
                continuous_batching_config=cb_config(
                    use_async_batching=True, num_blocks=8, max_batch_tokens=64, page_size=32, allow_block_sharing=False
                )
            ),
            model,
            book,
        )
    with pytest.raises(ValueError, match="prefix sharing"):  # a KV block computed at one λ reused at another
        attach_lambda_rows(
            model.init_continuous_batching(
                continuous_batching_config=cb_config(
                    use_async_batching=False, num_blocks=8, max_batch_tokens=64, page_size=32, allow_block_sharing=True
                )
            ),
            model,
            book,
        )


def test_stamping_queue_puts_the_registered_lambda_into_the_request_state():
    import queue

    from transformers.generation.continuous_batching.requests import RequestState

    from dami_kernels.serving.cb_internals import LambdaStampingQueue
    from dami_kernels.serving.lambda_policy import RequestLambdas, ServedLambda

    book = RequestLambdas(default=0.2)
    book.register("a", ServedLambda(0.7, "request"))
    with pytest.raises(ValueError, match="already in flight"):
        book.register("a", ServedLambda(0.1, "request"))
    q = LambdaStampingQueue(queue.Queue(), book)
    q.put(RequestState(request_id="a", initial_tokens=[1, 2]))
    q.put(RequestState(request_id="unregistered", initial_tokens=[1]))
    assert q.get_nowait().logit_processor_kwargs == {"lam": 0.7}
    assert q.get_nowait().logit_processor_kwargs == {"lam": 0.2}  # the server's default


def test_cb_config_puts_the_page_size_in_this_release_s_field():
    """transformers 5.24 names the KV cache page size `page_size`, 5.17 `block_size`: the one the cache reads."""
    import dataclasses

    from transformers import ContinuousBatchingConfig

    from dami_kernels.serving.cb_internals import cb_config

    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    config = cb_config(page_size=48, num_blocks=7, max_batch_tokens=None, use_async_batching=False)
    assert getattr(config, "page_size" if "page_size" in fields else "block_size") == 48
    assert config.num_blocks == 7 and config.use_async_batching is False
    assert config.max_batch_tokens == ContinuousBatchingConfig().max_batch_tokens  # None: transformers' default


def test_the_server_s_transformers_range_is_setup_py_s():
    """`dami serve` refuses a transformers outside cb_internals.TESTED_TRANSFORMERS; setup.py bounds the install
    with its TESTED table: the two must name the same releases."""
    import ast
    from pathlib import Path

    from dami_kernels.serving.cb_internals import TESTED_TRANSFORMERS

    tree = ast.parse((Path(__file__).resolve().parents[2] / "setup.py").read_text())
    tested = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "TESTED"
    )
    assert tuple(tested["transformers"]) == TESTED_TRANSFORMERS
