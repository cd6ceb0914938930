"""`dami serve` end to end: the shipped testbed pair behind transformers' server on a loopback port, driven by
the official `openai` client. Every answer is compared with `dk.generate`'s greedy text at the same λ (and, for
"auto", with `dk.estimate`'s λ), computed on a separately loaded copy of the pair."""
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import transformers

import dami_kernels as dk
from dami_kernels.estimators.store import load_estimator
from dami_kernels.hf import load_pair_and_tokenizer
from dami_kernels.hf.prompts import encode_prompts
from dami_kernels.serving import ServerThread, build_app
from dami_kernels.serving.templates import testbed_response_template as response_template
from dami_kernels.serving.versions import PAUSE_API, has_engine_pause
from dami_kernels.testbed import make_problems, testbed_dirs as pair_dirs


EFFORTS = {"low": 0.0, "medium": 0.4, "high": 1.0}
MAX_TOKENS = 72   # a whole scratchpad fits (Thinking: 3 two-column lines; the base form some λ write: 5 one-column lines)
# Testbed problems (one surface form at every difficulty), fixed by a seed
PROMPTS = [p.expression for p in make_problems(12, 2026, split="test")]

HAS_PAUSE = has_engine_pause()  # "lam": "auto" runs the estimator while the engine is paused
needs_pause = pytest.mark.skipif(not HAS_PAUSE, reason=f'"lam": "auto" needs {PAUSE_API}, which transformers '
                                 f"{transformers.__version__} lacks")


def cli_options(argv: list[str]):
    """ServeOptions as `dami serve ARGV` builds them (the command's own parser and option handling)."""
    from dami_kernels.cli import build_parser
    from dami_kernels.cli.serve import options_from_args

    return options_from_args(build_parser().parse_args(["serve", *argv]), testbed=True, device_type="cpu")


@pytest.fixture(scope="module")
def server():
    model, tok = load_pair_and_tokenizer(*pair_dirs(), progress=False)
    estimator = ["--estimator", "conf"] if HAS_PAUSE else []  # (without the pause API the server refuses one)
    options = cli_options([*estimator, "--effort-medium", str(EFFORTS["medium"]), "--cb-page-size", "32",
                           "--cb-num-blocks", "96", "--cb-max-batch-tokens", "512"])
    assert options.efforts == EFFORTS and (options.estimator[0] == "conf" if HAS_PAUSE else options.estimator is None)
    assert options.response_template == response_template() and options.cb_max_batch_tokens == 512
    app, served = build_app(model, tok, options)
    with ServerThread(app, served) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference():
    """(model, tokenizer, estimator) of a second copy of the pair, for dk.generate / dk.estimate."""
    model, tok = load_pair_and_tokenizer(*pair_dirs(), progress=False)
    return model, tok, load_estimator("conf")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def chat_text(tok, prompt: str) -> str:
    """The chat-templated prompt as raw text (what /v1/completions gets to run the same tokens)."""
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def expected(reference, prompts, lams):
    model, tok, _ = reference
    return [r.text for r in dk.generate(model, tok, prompts, lams, max_new_tokens=MAX_TOKENS, progress=False)]


def auto_lam(reference, prompt) -> float:
    model, tok, est = reference
    return float(dk.estimate(model, tok, [prompt], "conf", estimator=est, progress=False)[0])


def split_think(text: str):
    """(reasoning, content) of a testbed reply, as the testbed response template splits it."""
    if text.startswith("<think>") and "</think>" in text:
        inner, _, rest = text[len("<think>"):].partition("</think>")
        return inner.strip(), rest
    return None, text


def send(client, reference, kind: str, prompt: str, lam_spec: dict, stream: bool = False):
    """One request; returns (text, λ reported in the body, λ reported in the header, reasoning)."""
    tok = reference[1]
    if kind == "completion":
        extra = {k: v for k, v in lam_spec.items()}
        if stream:
            chunks = list(client.completions.create(model="dami-pair", prompt=chat_text(tok, prompt),
                                                    max_tokens=MAX_TOKENS, stream=True, extra_body=extra))
            lams = {c.lam for c in chunks}
            assert len(lams) == 1, "every chunk reports the one λ of its request"
            return "".join(c.choices[0].text for c in chunks if c.choices), lams.pop(), None, None
        raw = client.completions.with_raw_response.create(model="dami-pair", prompt=chat_text(tok, prompt),
                                                          max_tokens=MAX_TOKENS, extra_body=extra)
        body = raw.parse()
        assert body.usage.prompt_tokens == len(encode_prompts(tok, [prompt])[0])  # the tokens dk.generate runs
        return body.choices[0].text, body.lam, float(raw.headers["x-dami-lam"]), None
    kwargs = dict(model="dami-pair", messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS)
    if "reasoning_effort" in lam_spec:
        kwargs["reasoning_effort"] = lam_spec["reasoning_effort"]
    else:
        kwargs["extra_body"] = dict(lam_spec)
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        lams = {c.lam for c in chunks}
        assert len(lams) == 1
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        content = "".join(d.content or "" for d in deltas)
        reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas).strip() or None
        return content, lams.pop(), None, reasoning
    raw = client.chat.completions.with_raw_response.create(**kwargs)
    body = raw.parse()
    message = body.choices[0].message
    return message.content, body.lam, float(raw.headers["x-dami-lam"]), getattr(message, "reasoning_content", None)


def check(reference, kind, prompt, lam, got, ref_text):
    text, lam_body, lam_header, reasoning = got
    assert lam_body == pytest.approx(lam, abs=1e-6), (prompt, lam_body, lam)
    if lam_header is not None:
        assert lam_header == lam_body
    if kind == "completion":
        assert text == ref_text, (prompt, lam)
    else:
        assert (reasoning, text) == split_think(ref_text), (prompt, lam)


def test_eight_concurrent_requests_at_eight_lambdas_match_generate(server, client, reference):
    cases = [  # (endpoint, prompt, λ spec)
        ("completion", PROMPTS[0], {"lam": 0.0}),
        ("completion", PROMPTS[1], {"lam": 0.3}),
        ("completion", PROMPTS[2], {"lam": 1.0}),
        ("completion", PROMPTS[3], {"reasoning_effort": "medium"}),
        ("chat", PROMPTS[4], {"lam": 0.7}),
        ("chat", PROMPTS[5], {"reasoning_effort": "high"}),
        ("chat", PROMPTS[6], {"lam": 0.15}),
        ("completion", PROMPTS[7], {"lam": 0.85}),
    ]
    rows = server.served.engine.rows
    mixed_before = rows.mixed_steps
    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(lambda c: send(client, reference, *c), cases))
    lams = [lam_of(reference, prompt, spec) for _, prompt, spec in cases]
    refs = expected(reference, [c[1] for c in cases], lams)
    for (kind, prompt, _), lam, g, ref_text in zip(cases, lams, got, refs):
        check(reference, kind, prompt, lam, g, ref_text)
    assert len(set(lams)) >= 7
    assert any(g[3] for (kind, _, _), g in zip(cases, got) if kind == "chat"), "no chat reply had reasoning_content"
    assert rows.mixed_steps > mixed_before, "requests with different λ never shared an engine step"
    assert len(server.served.lambdas) == 0  # every request released its λ


def lam_of(reference, prompt: str, spec: dict) -> float:
    """The λ a request with this λ spec must run at (for "auto": dk.estimate's λ on the reference copy)."""
    lam = spec.get("lam", EFFORTS.get(spec.get("reasoning_effort")))
    return auto_lam(reference, prompt) if lam == "auto" else lam


def test_streaming_gives_the_same_text(client, reference):
    cases = [("completion", PROMPTS[8], {"lam": 1.0}), ("completion", PROMPTS[9], {"lam": 0.2}),
             ("chat", PROMPTS[10], {"lam": 0.9}), ("chat", PROMPTS[11], {"lam": 0.55})]
    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(lambda c: send(client, reference, *c, stream=True), cases))
    lams = [s["lam"] for _, _, s in cases]
    refs = expected(reference, [c[1] for c in cases], lams)
    for (kind, prompt, _), lam, g, ref_text in zip(cases, lams, got, refs):
        check(reference, kind, prompt, lam, g, ref_text)


@needs_pause
def test_auto_requests_run_at_the_estimated_lambda_beside_fixed_ones(server, client, reference):
    """ "lam": "auto" (chat and completion, streaming and not) while fixed-λ requests are in flight: each runs at
    dk.estimate's λ for its prompt and gives dk.generate's text at that λ."""
    cases = [("chat", PROMPTS[6], {"lam": "auto"}, False), ("completion", PROMPTS[7], {"lam": "auto"}, False),
             ("chat", PROMPTS[11], {"lam": "auto"}, True), ("completion", PROMPTS[0], {"lam": 0.65}, False),
             ("chat", PROMPTS[2], {"reasoning_effort": "high"}, True)]
    calls_before = server.served.auto.calls
    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(lambda c: send(client, reference, *c[:3], stream=c[3]), cases))
    lams = [lam_of(reference, prompt, spec) for _, prompt, spec, _ in cases]
    refs = expected(reference, [c[1] for c in cases], lams)
    for (kind, prompt, _, _), lam, g, ref_text in zip(cases, lams, got, refs):
        check(reference, kind, prompt, lam, g, ref_text)
    assert server.served.auto.calls - calls_before == 3
    assert len(server.served.lambdas) == 0


@pytest.mark.skipif(HAS_PAUSE, reason=f"transformers {transformers.__version__} has {PAUSE_API}: \"auto\" is served")
def test_auto_is_refused_at_startup_without_the_engine_pause(capsys):
    """Without the pause API, an estimator (or --default-lam auto) stops `dami serve` at startup with one line
    naming the transformers API it needs, before the pair loads."""
    from dami_kernels.cli import main
    from dami_kernels.serving import ServeOptions

    assert main(["serve", "--estimator", "conf", "--port", "8123"]) == 2
    err = capsys.readouterr().err.strip()
    assert PAUSE_API in err and "5.24" in err and transformers.__version__ in err and "\n" not in err, err
    with pytest.raises(ValueError, match=PAUSE_API):
        build_app(None, None, ServeOptions(estimator=("conf", object())))


def post(server, path: str, body: bytes, headers=None):
    """(status, parsed JSON) of a raw POST (NaN and malformed bodies the openai client refuses to send)."""
    req = urllib.request.Request(server.base_url + path, data=body, method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_bad_requests_get_400_while_good_ones_in_flight_complete(server, client, reference):
    tok = reference[1]
    good = [("completion", PROMPTS[4], {"lam": 1.0}), ("chat", PROMPTS[9], {"lam": 1.0}),
            ("completion", PROMPTS[11], {"lam": 0.6})]
    first = [threading.Event() for _ in good]

    def run(k):  # a streaming request: signals its first chunk, then reads to the end
        kind, prompt, spec = good[k]
        if kind == "completion":
            stream = client.completions.create(model="dami-pair", prompt=chat_text(tok, prompt), max_tokens=MAX_TOKENS,
                                               stream=True, extra_body=spec)
        else:
            stream = client.chat.completions.create(model="dami-pair", messages=[{"role": "user", "content": prompt}],
                                                    max_tokens=MAX_TOKENS, stream=True, extra_body=spec)
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            first[k].set()
        return chunks

    with ThreadPoolExecutor(len(good) + 4) as pool:
        running = [pool.submit(run, k) for k in range(len(good))]
        assert all(e.wait(timeout=60) for e in first)  # every good request is in flight
        prompt = chat_text(tok, PROMPTS[0])
        answers = list(pool.map(lambda b: post(server, b[0], b[1]), bad_requests(prompt)))
        results = [r.result(timeout=120) for r in running]
    for (path, body, field), (status, data) in zip(bad_requests(prompt), answers):
        assert status == 400, (path, body, status, data)
        assert data["detail"].startswith(field + ":") and "\n" not in data["detail"], data
    lams = [s["lam"] for _, _, s in good]
    refs = expected(reference, [p for _, p, _ in good], lams)
    for (kind, _, _), chunks, ref_text, lam in zip(good, results, refs, lams):
        assert {c.lam for c in chunks} == {lam}
        if kind == "completion":
            assert "".join(c.choices[0].text for c in chunks if c.choices) == ref_text
        else:
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert content == split_think(ref_text)[1]
    with urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/health", timeout=10) as resp:
        assert resp.status == 200


def bad_requests(prompt: str) -> list:
    """(path, raw JSON body, the field the 400 message must start with)."""
    chat = [{"role": "user", "content": "1+1"}]
    bodies = [
        ("/completions", {"prompt": prompt, "lam": 1.5}, "lam"),
        ("/completions", {"prompt": prompt, "lam": -0.2}, "lam"),
        ("/completions", {"prompt": prompt, "lam": "fast"}, "lam"),
        ("/completions", {"prompt": prompt, "lam": True}, "lam"),
        ("/chat/completions", {"messages": chat, "reasoning_effort": "extreme"}, "reasoning_effort"),
        ("/chat/completions", {"messages": chat, "lam": 0.5, "reasoning_effort": "low"}, "lam"),
        ("/completions", {"prompt": "1+" * 80}, "prompt"),
        ("/completions", {"prompt": "1+" * 80, "stream": True}, "prompt"),
        ("/chat/completions", {"messages": chat, "lam": 2, "stream": True}, "lam"),
        ("/chat/completions", {"messages": [{"role": "user", "content": "1+" * 80}]}, "messages"),
        ("/completions", {"prompt": prompt, "max_tokens": 500}, "max_tokens"),
        ("/completions", {"prompt": prompt, "max_tokens": 0}, "max_tokens"),
        ("/completions", {"prompt": prompt, "model": "other-model"}, "model"),
    ]
    out = [(path, json.dumps(body).encode(), field) for path, body, field in bodies]
    out.append(("/completions", b'{"prompt": "<|bos|>", "lam": NaN}', "lam"))  # the openai client refuses to send NaN
    return out


def test_a_request_id_in_flight_is_refused(server):
    from dami_kernels.serving import ServedLambda

    server.served.lambdas.register("busy-id", ServedLambda(0.0, "test"))
    try:
        status, data = post(server, "/completions", b'{"prompt": "<|bos|>"}', {"x-request-id": "busy-id"})
    finally:
        server.served.lambdas.release("busy-id")
    assert status == 400 and data["detail"].startswith("x-request-id:") and "in flight" in data["detail"]
    status, data = post(server, "/completions", b'{"prompt": "<|bos|>", "lam": NaN}')
    assert data["detail"] == "lam: must be finite, got nan"


def test_chat_max_completion_tokens_limits_the_reply(client, reference):
    """max_completion_tokens (the OpenAI chat field; transformers 5.17's handler refuses it, the pair's passes it
    on as max_tokens) stops the reply after that many tokens, and wins over max_tokens."""
    model, tok, _ = reference
    ref = dk.generate(model, tok, [PROMPTS[3]], [1.0], max_new_tokens=3, progress=False)[0]
    assert ref.num_tokens == 3  # (the Thinking side's reply is longer than 3 tokens)
    for extra in ({"max_completion_tokens": 3}, {"max_completion_tokens": 3, "max_tokens": 30}):
        body = client.chat.completions.create(model="dami-pair", messages=[{"role": "user", "content": PROMPTS[3]}],
                                              extra_body={"lam": 1.0, **extra})
        assert body.usage.completion_tokens == 3 and body.lam == 1.0


def test_models_lists_the_pair_and_other_routes_are_refused(server, client):
    assert [m.id for m in client.models.list()] == ["dami-pair"]
    status, data = post(server, "/responses", json.dumps({"input": "hi"}).encode())
    assert status == 404 and "/v1/chat/completions" in data["detail"]


def test_load_many_clients(client, reference):
    """A small load test (the full 64 requests / 16 clients run in bench/bench_serve.py): every answer equal to
    the reference."""
    n, clients = 24, 8
    cases = [("completion", PROMPTS[k % len(PROMPTS)], {"lam": round((k * 0.37) % 1.0, 3)}) for k in range(n)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        got = list(pool.map(lambda c: send(client, reference, *c), cases))
    elapsed = time.perf_counter() - t0
    refs = expected(reference, [c[1] for c in cases], [c[2]["lam"] for c in cases])
    assert [g[0] for g in got] == refs
    assert elapsed < 120


def test_context_is_the_smaller_of_the_model_and_the_kv_cache(server):
    assert server.served.context_len == 128  # the testbed's max_position_embeddings; the cache holds 96 × 32
    model, tok = load_pair_and_tokenizer(*pair_dirs(), progress=False)
    from dami_kernels.serving import ServeOptions

    _, served = build_app(model, tok, ServeOptions(cb_page_size=32, cb_num_blocks=2, cb_max_batch_tokens=64))
    try:
        assert served.context_len == 64  # 2 blocks of 32 tokens: a longer request could never be scheduled
    finally:
        served.shutdown()


def test_cli_options():
    options = cli_options(["--default-lam", "auto", "--estimator", "pref", "--model-name", "m", "--effort-low",
                           "0.1", "--cuda-graphs", "off", "--context-len", "64"])
    assert options.default_lam == "auto" and options.estimator[0] == "pref" and options.model_id == "m"
    assert options.efforts["low"] == 0.1 and options.cuda_graphs is False and options.context_len == 64
    assert (options.cb_page_size, options.cb_num_blocks, options.cb_max_batch_tokens) == (64, 64, 1024)  # CPU
    assert cli_options(["--default-lam", "0.75"]).default_lam == 0.75
    with pytest.raises(ValueError, match="--default-lam"):
        cli_options(["--default-lam", "fast"])
    with pytest.raises(ValueError, match="--estimator-dir needs --estimator"):
        cli_options(["--estimator-dir", "x"])
    with pytest.raises(ValueError, match="--cb-num-blocks"):
        cli_options(["--cb-num-blocks", "0"])


def test_cli_serve_rejects_bad_options_before_loading(capsys):
    from dami_kernels.cli import main

    assert main(["serve", "--default-lam", "auto"]) == 2
    assert "estimator" in capsys.readouterr().err
    assert main(["serve", "--effort-high", "1.5"]) == 2
    assert "reasoning_effort level 'high'" in capsys.readouterr().err
    assert main(["serve", "--port", "0"]) == 2
