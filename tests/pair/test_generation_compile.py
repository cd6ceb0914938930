"""dk.generate(..., compile=True) and `dami generate --compile`: the decode step compiled with a static KV
cache, λ updated in place between calls without recompiling.

Most tests compile with dynamo's "eager" backend (same graphs, guards and recompilations as inductor, but
seconds instead of about a minute to build on the CPU) and fullgraph=True (a graph break in the model
fails the test). One slow test runs the real default, compile=True (inductor). All on a tiny random
Qwen3 pair.
Recompilations are counted with dynamo's own counter (unique_graphs) and forbidden with
torch._dynamo.config.error_on_recompile; test_new_batch_size_recompiles shows both checks can fail.
"""

import json

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import CompileConfig

import dami_kernels as dk
from dami_kernels.cli import main
from dami_kernels.generation import compile_config_for, resolve_compile
from dami_kernels.pair import lambda_state
from tiny_pairs import cached_pair

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # slow: torch.compile

# dynamic=False: every new shape is a recompilation (stricter than the default automatic dynamic shapes)
FAST = CompileConfig(backend="eager", mode=None, fullgraph=True, dynamic=False)
RUNS = {"graph": 0}


def counting_eager(gm, example_inputs):
    """A dynamo backend like "eager" that counts how often a compiled graph runs."""

    def run(*args):
        RUNS["graph"] += 1
        return gm.forward(*args)

    return run


COUNTING = CompileConfig(backend=counting_eager, mode=None, fullgraph=True, dynamic=False)
PROMPTS = ["ab", "hello", "x+1="]
MIXED, UNIFORM, OTHER = [0.0, 0.5, 1.0], 0.7, [1.0, 0.0, 0.3]
NEW = 8


def load():
    """A tiny random Qwen3 pair (2 layers, character tokenizer with a chat template)."""
    paths = cached_pair("qwen3")
    return dk.load_pair_and_tokenizer(paths.instruct, paths.thinking, backend="torch", progress=False)


@pytest.fixture(scope="module")
def pair():
    return load()


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def run(model, tok, lam, prompts=PROMPTS, **kw):
    kw.setdefault("max_new_tokens", NEW)
    res = dk.generate(model, tok, prompts, lam, progress=False, **kw)
    return [r.token_ids for r in res], [r.text for r in res]


def test_compiled_equals_eager_and_lambda_changes_do_not_recompile(pair):
    model, tok = pair
    settings = (("mixed", MIXED), ("uniform", UNIFORM), ("other", OTHER))
    eager = {name: run(model, tok, lam) for name, lam in settings}
    assert len({str(v[0]) for v in eager.values()}) == 3  # the three λ settings give different tokens
    before = graphs()
    assert run(model, tok, MIXED, compile=COUNTING) == eager["mixed"]
    assert graphs() == before + 1  # the decode step was compiled, as one graph (the prefill stays eager)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for name, lam in (("uniform", UNIFORM), ("other", OTHER), ("mixed", MIXED)):
            runs = RUNS["graph"]
            assert run(model, tok, lam, compile=COUNTING) == eager[name], name
            assert RUNS["graph"] > runs  # the decode steps really ran the compiled graph
    assert graphs() == before + 1
    assert lambda_state(model).get() == 0.0  # λ restored after every call


def test_new_batch_size_recompiles(pair):
    """The no-recompile checks above can fail: a genuinely new shape (batch 2) trips both of them."""
    model, tok = pair
    run(model, tok, MIXED, compile=FAST)
    before = graphs()
    with torch._dynamo.config.patch(error_on_recompile=True):
        with pytest.raises(torch._dynamo.exc.RecompileError):
            run(model, tok, OTHER[:2], prompts=PROMPTS[:2], compile=FAST)
    assert run(model, tok, OTHER[:2], prompts=PROMPTS[:2], compile=FAST) == run(
        model, tok, OTHER[:2], prompts=PROMPTS[:2]
    )
    assert graphs() > before


def test_batches_of_different_prompt_lengths_share_one_graph():
    """Every batch of one call gets the same static cache length (longest prompt + max_new_tokens), so a
    later batch with longer prompts does not recompile (a fresh model: transformers keeps the longest
    cache length of earlier calls on the model)."""
    model, tok = load()
    prompts = ["ab", "c", "de", "a longer prompt", "and another one", "the third long one"]
    lams = [0.0, 1.0, 0.5, 0.2, 1.0, 0.7]
    eager = run(model, tok, lams, prompts=prompts, batch_size=3)
    before = graphs()
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert run(model, tok, lams, prompts=prompts, batch_size=3, compile=FAST) == eager
    assert graphs() == before + 1


def test_compiled_sampling_with_return_sequences_equals_eager(pair):
    """Sampling, λ expanded per returned sequence, and aot_eager (functionalized AOT graphs, as inductor
    gets them)."""
    model, tok = pair
    kw = dict(do_sample=True, top_k=8, temperature=1.5, num_return_sequences=2)
    outs = []
    for compile in (False, CompileConfig(backend="aot_eager", mode=None, fullgraph=True, dynamic=False)):
        torch.manual_seed(1)
        outs.append(run(model, tok, MIXED, compile=compile, **kw))
    assert outs[0] == outs[1]
    assert len(outs[0][0]) == 6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_beams=2), "num_beams"),
        (dict(prompt_lookup_num_tokens=3), "prompt_lookup_num_tokens"),
        (dict(cache_implementation="dynamic"), "cache_implementation"),
        (dict(use_cache=False), "use_cache"),
        (dict(compile_config=CompileConfig()), "compile_config"),
        (dict(disable_compile=True), "disable_compile"),
        (dict(compile=3), "compile must be"),
        (dict(compile=""), "backend"),
    ],
)
def test_unsupported_options_are_value_errors(pair, kwargs, match):
    model, tok = pair
    kwargs.setdefault("compile", True)
    with pytest.raises(ValueError, match=match):
        run(model, tok, MIXED, **kwargs)
    assert lambda_state(model).get() == 0.0


def test_default_configs_and_what_generate_passes(pair, monkeypatch):
    cuda = compile_config_for(torch.device("cuda"))
    assert (cuda.backend, cuda.mode, cuda._compile_all_devices) == ("inductor", "reduce-overhead", True)
    cpu = resolve_compile(True, torch.device("cpu"))
    assert (cpu.backend, cpu.mode, cpu._compile_all_devices) == ("inductor", "default", True)
    assert resolve_compile("aot_eager", "cuda").mode is None
    assert resolve_compile(False, "cpu") is None
    given = resolve_compile(FAST, "cpu")
    assert given == FAST and given._compile_all_devices and FAST._compile_all_devices is None  # a flagged copy

    model, tok = pair
    seen = []

    def fake_generate(input_ids, attention_mask, **kw):
        seen.append(kw)
        return torch.cat([input_ids, torch.full((input_ids.shape[0], 1), 2)], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    run(model, tok, MIXED, compile=True, batch_size=2)
    longest = max(
        len(
            tok.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
        for p in PROMPTS
    )
    assert len(seen) == 2
    for kw in seen:
        assert kw["cache_implementation"] == "static" and kw["compile_config"] == cpu
        assert kw["max_cache_len"] == longest + NEW


def test_cli_generate_compile(capsys):
    paths = cached_pair("qwen3")
    base = [
        "generate",
        "--instruct",
        str(paths.instruct),
        "--thinking",
        str(paths.thinking),
        "--device",
        "cpu",
        "--backend",
        "torch",
        "--max-new-tokens",
        "6",
        "--json",
        "--lam",
        "0",
        "--lam",
        "1",
        "hello",
        "2+2=",
    ]
    assert main(base) == 0
    eager = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert main(base + ["--compile", "--compile-backend", "eager"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()] == eager
    assert main(base + ["--compile-backend", "eager"]) == 2
    assert "--compile-backend needs --compile" in capsys.readouterr().err


@pytest.mark.slow
def test_inductor_default_on_cpu():
    """compile=True itself (inductor; mode="default" off CUDA) on a tiny random pair."""
    model, tok = load()
    eager = run(model, tok, MIXED, max_new_tokens=6)
    before = graphs()
    assert run(model, tok, MIXED, max_new_tokens=6, compile=True) == eager
    assert graphs() > before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compile_true_on_cuda_uses_cuda_graphs_and_keeps_them_across_lambda_changes():
    """The CUDA default (inductor, mode="reduce-overhead"; Triton kernels): equal to eager, and new λ values
    reuse the compiled graph."""
    paths = cached_pair("qwen3")
    model, tok = dk.load_pair_and_tokenizer(paths.instruct, paths.thinking, device="cuda", progress=False)
    eager = {name: run(model, tok, lam) for name, lam in (("mixed", MIXED), ("other", OTHER))}
    skips = counters["inductor"]["cudagraph_skips"]
    assert run(model, tok, MIXED, compile=True) == eager["mixed"]
    assert counters["inductor"]["cudagraph_skips"] == skips  # the decode graph runs as a CUDA graph
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert run(model, tok, OTHER, compile=True) == eager["other"]
        assert run(model, tok, MIXED, compile=True) == eager["mixed"]
