"""`dami serve` end to end: the shipped testbed pair behind the server on a loopback port, driven by the official
`openai` client. Every answer is compared with `dk.generate`'s greedy text at the same λ (and, for "auto", with
`dk.estimate`'s λ; for logprobs, with a forward pass of the model at that λ), computed on a separately loaded copy
of the pair. Hostile requests (each followed by correct answers from the same server), API keys, metrics and a
worker that dies and is restarted are tested here too."""

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
from dami_kernels.hf.prompts import encode_prompts
from dami_kernels.pair import load_pair_and_tokenizer
from dami_kernels.serving import ServerThread, build_app
from dami_kernels.serving.cb_internals import PAUSE_API, has_engine_pause
from dami_kernels.testbed import make_problems
from dami_kernels.testbed import testbed_dirs as pair_dirs

pytestmark = pytest.mark.slow  # a live server and its engine; 128 concurrent requests


EFFORTS = {"low": 0.0, "medium": 0.4, "high": 1.0}
MAX_TOKENS = (
    72  # a whole scratchpad fits (Thinking: 3 two-column lines; the base form some λ write: 5 one-column lines)
)
# Testbed problems (one surface form at every difficulty), fixed by a seed
PROMPTS = [p.expression for p in make_problems(12, 2026, split="test")]

HAS_PAUSE = has_engine_pause()  # "lam": "auto" runs the estimator while the engine is paused
needs_pause = pytest.mark.skipif(
    not HAS_PAUSE, reason=f'"lam": "auto" needs {PAUSE_API}, which transformers {transformers.__version__} lacks'
)


def cli_options(argv: list[str]):
    """ServeOptions as `dami serve ARGV` builds them (the command's own parser and option handling)."""
    from dami_kernels.cli import build_parser
    from dami_kernels.cli.serve import options_from_args

    return options_from_args(build_parser().parse_args(["serve", *argv]), testbed=True, device_type="cpu")


@pytest.fixture(scope="module")
def server():
    model, tok = load_pair_and_tokenizer(*pair_dirs(), progress=False)
    estimator = ["--estimator", "conf"] if HAS_PAUSE else []  # (without the pause API the server refuses one)
    options = cli_options(
        [
            *estimator,
            "--effort-medium",
            str(EFFORTS["medium"]),
            "--cb-page-size",
            "32",
            "--cb-num-blocks",
            "96",
            "--cb-max-batch-tokens",
            "512",
        ]
    )
    assert options.efforts == EFFORTS and (options.estimator[0] == "conf" if HAS_PAUSE else options.estimator is None)
    assert options.cb_max_batch_tokens == 512 and options.api_key is None
    app, served = build_app(model, tok, options)
    with ServerThread(app, served) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference():
    """(model, tokenizer, estimator) of a second copy of the pair, for dk.generate / dk.estimate (extrapolation
    allowed, for the keyed server's λ = 1.3)."""
    model, tok = load_pair_and_tokenizer(*pair_dirs(), progress=False, allow_extrapolation=True)
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
        inner, _, rest = text[len("<think>") :].partition("</think>")
        return inner.strip(), rest
    return None, text


def send(client, reference, kind: str, prompt: str, lam_spec: dict, stream: bool = False):
    """One request; returns (text, λ reported in the body, λ reported in the header, reasoning)."""
    tok = reference[1]
    if kind == "completion":
        extra = {k: v for k, v in lam_spec.items()}
        if stream:
            chunks = list(
                client.completions.create(
                    model="dami-pair",
                    prompt=chat_text(tok, prompt),
                    max_tokens=MAX_TOKENS,
                    stream=True,
                    extra_body=extra,
                )
            )
            lams = {c.lam for c in chunks}
            assert len(lams) == 1, "every chunk reports the one λ of its request"
            return "".join(c.choices[0].text for c in chunks if c.choices), lams.pop(), None, None
        raw = client.completions.with_raw_response.create(
            model="dami-pair", prompt=chat_text(tok, prompt), max_tokens=MAX_TOKENS, extra_body=extra
        )
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
    for (kind, prompt, _), lam, g, ref_text in zip(cases, lams, got, refs, strict=True):
        check(reference, kind, prompt, lam, g, ref_text)
    assert len(set(lams)) >= 7
    assert any(g[3] for (kind, _, _), g in zip(cases, got, strict=True) if kind == "chat"), (
        "no chat reply had reasoning_content"
    )
    assert rows.mixed_steps > mixed_before, "requests with different λ never shared an engine step"
    assert len(server.served.lambdas) == 0  # every request released its λ


def lam_of(reference, prompt: str, spec: dict) -> float:
    """The λ a request with this λ spec must run at (for "auto": dk.estimate's λ on the reference copy)."""
    lam = spec.get("lam", EFFORTS.get(spec.get("reasoning_effort")))
    return auto_lam(reference, prompt) if lam == "auto" else lam


def test_streaming_gives_the_same_text(client, reference):
    cases = [
        ("completion", PROMPTS[8], {"lam": 1.0}),
        ("completion", PROMPTS[9], {"lam": 0.2}),
        ("chat", PROMPTS[10], {"lam": 0.9}),
        ("chat", PROMPTS[11], {"lam": 0.55}),
    ]
    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(lambda c: send(client, reference, *c, stream=True), cases))
    lams = [s["lam"] for _, _, s in cases]
    refs = expected(reference, [c[1] for c in cases], lams)
    for (kind, prompt, _), lam, g, ref_text in zip(cases, lams, got, refs, strict=True):
        check(reference, kind, prompt, lam, g, ref_text)


@needs_pause
def test_auto_requests_run_at_the_estimated_lambda_beside_fixed_ones(server, client, reference):
    """ "lam": "auto" (chat and completion, streaming and not) while fixed-λ requests are in flight: each runs at
    dk.estimate's λ for its prompt and gives dk.generate's text at that λ."""
    cases = [
        ("chat", PROMPTS[6], {"lam": "auto"}, False),
        ("completion", PROMPTS[7], {"lam": "auto"}, False),
        ("chat", PROMPTS[11], {"lam": "auto"}, True),
        ("completion", PROMPTS[0], {"lam": 0.65}, False),
        ("chat", PROMPTS[2], {"reasoning_effort": "high"}, True),
    ]
    calls_before = server.served.auto.calls
    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(lambda c: send(client, reference, *c[:3], stream=c[3]), cases))
    lams = [lam_of(reference, prompt, spec) for _, prompt, spec, _ in cases]
    refs = expected(reference, [c[1] for c in cases], lams)
    for (kind, prompt, _, _), lam, g, ref_text in zip(cases, lams, got, refs, strict=True):
        check(reference, kind, prompt, lam, g, ref_text)
    assert server.served.auto.calls - calls_before == 3
    assert len(server.served.lambdas) == 0


@pytest.mark.skipif(HAS_PAUSE, reason=f'transformers {transformers.__version__} has {PAUSE_API}: "auto" is served')
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
    req = urllib.request.Request(
        server.base_url + path,
        data=body,
        method="POST",
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_bad_requests_get_400_while_good_ones_in_flight_complete(server, client, reference):
    tok = reference[1]
    good = [
        ("completion", PROMPTS[4], {"lam": 1.0}),
        ("chat", PROMPTS[9], {"lam": 1.0}),
        ("completion", PROMPTS[11], {"lam": 0.6}),
    ]
    first = [threading.Event() for _ in good]

    def run(k):  # a streaming request: signals its first chunk, then reads to the end
        kind, prompt, spec = good[k]
        if kind == "completion":
            stream = client.completions.create(
                model="dami-pair", prompt=chat_text(tok, prompt), max_tokens=MAX_TOKENS, stream=True, extra_body=spec
            )
        else:
            stream = client.chat.completions.create(
                model="dami-pair",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=MAX_TOKENS,
                stream=True,
                extra_body=spec,
            )
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
    for (path, body, field), (status, data) in zip(bad_requests(prompt), answers, strict=True):
        assert status == 400, (path, body, status, data)
        assert_error(data, field)
    lams = [s["lam"] for _, _, s in good]
    refs = expected(reference, [p for _, p, _ in good], lams)
    for (kind, _, _), chunks, ref_text, lam in zip(good, results, refs, lams, strict=True):
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
    server.served.inflight.add("busy-id")
    try:
        status, data = post(server, "/completions", b'{"prompt": "<|bos|>"}', {"x-request-id": "busy-id"})
    finally:
        server.served.inflight.discard("busy-id")
    assert status == 400 and assert_error(data, "x-request-id") and "in flight" in data["error"]["message"]
    status, data = post(server, "/completions", b'{"prompt": "<|bos|>", "lam": NaN}')
    assert data["error"]["message"] == "lam: must be finite, got nan"


def test_chat_max_completion_tokens_limits_the_reply(client, reference):
    """max_completion_tokens (the OpenAI chat field) stops the reply after that many tokens, and wins over
    max_tokens."""
    model, tok, _ = reference
    ref = dk.generate(model, tok, [PROMPTS[3]], [1.0], max_new_tokens=3, progress=False)[0]
    assert ref.num_tokens == 3  # (the Thinking side's reply is longer than 3 tokens)
    for extra in ({"max_completion_tokens": 3}, {"max_completion_tokens": 3, "max_tokens": 30}):
        body = client.chat.completions.create(
            model="dami-pair", messages=[{"role": "user", "content": PROMPTS[3]}], extra_body={"lam": 1.0, **extra}
        )
        assert body.usage.completion_tokens == 3 and body.lam == 1.0


def test_models_lists_the_pair_and_other_routes_are_refused(server, client):
    assert [m.id for m in client.models.list()] == ["dami-pair"]
    status, data = post(server, "/responses", json.dumps({"input": "hi"}).encode())
    assert status == 404 and "/v1/chat/completions" in data["error"]["message"]
    assert data["error"]["type"] == "not_found_error"


def test_an_idle_keep_alive_connection_outlives_the_clients_own_expiry(server):
    """httpx (the openai client) drops a pooled connection after 5 s idle; the server must keep it longer, or a
    request sent on it as the server closes it is reset unread (seen in CI: "connection reset by peer")."""
    import http.client

    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        for wait in (0.0, 6.0):
            time.sleep(wait)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert resp.status == 200 and not resp.will_close
            resp.read()
        assert conn.sock is not None  # the same socket both times: http.client would have reconnected otherwise
    finally:
        conn.close()


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
    options = cli_options(
        [
            "--default-lam",
            "auto",
            "--estimator",
            "pref",
            "--model-name",
            "m",
            "--effort-low",
            "0.1",
            "--cuda-graphs",
            "off",
            "--context-len",
            "64",
        ]
    )
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
    assert options.api_key is None and options.max_n == 16
    assert cli_options(["--api-key", "k1", "--max-n", "4"]).api_key == "k1"
    with pytest.raises(ValueError, match="--max-n"):
        cli_options(["--max-n", "0"])
    with pytest.raises(ValueError, match="--api-key"):
        cli_options(["--api-key", "two words"])


def test_cli_reads_the_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("DAMI_API_KEY", "from-env")
    assert cli_options([]).api_key == "from-env"
    assert cli_options(["--api-key", "flag"]).api_key == "flag"  # the flag wins


def test_cli_serve_rejects_bad_options_before_loading(capsys):
    from dami_kernels.cli import main

    assert main(["serve", "--default-lam", "auto"]) == 2
    assert "estimator" in capsys.readouterr().err
    assert main(["serve", "--effort-high", "1.5"]) == 2
    assert "reasoning_effort level 'high'" in capsys.readouterr().err
    assert main(["serve", "--port", "0"]) == 2


# ---- OpenAI error bodies, hostile requests, n, logprobs ----


def assert_error(data: dict, field: str) -> bool:
    """An OpenAI error body whose one-line message starts with the field's name and whose param names it."""
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"}, data
    assert error["message"].startswith(field + ":") and "\n" not in error["message"], data
    assert error["param"] == field and error["type"] == "invalid_request_error", data
    return True


GOOD = (PROMPTS[1], 0.6)  # the request sent after every hostile one: (prompt, λ)
CHAT = [{"role": "user", "content": "12+34"}]


def hostile_cases() -> list:
    """(path, raw JSON body, the field the 400 names): the requests that crashed or fooled the server before."""
    cases = [
        ("/completions", {"prompt": ""}, "prompt"),
        ("/completions", {}, "prompt"),
        ("/completions", {"prompt": ["1+1", "2+2"]}, "prompt"),
        ("/completions", {"prompt": [10**9]}, "prompt"),
        ("/chat/completions", {"messages": "hi"}, "messages"),
        ("/chat/completions", {"messages": []}, "messages"),
        ("/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ("/chat/completions", {"messages": [{"role": "evil", "content": "hi"}]}, "messages[0].role"),
        ("/chat/completions", {"messages": [{"role": "system", "content": "be brief"}, *CHAT]}, "messages"),
        ("/chat/completions", {"messages": CHAT, "temperature": "x"}, "temperature"),
        ("/chat/completions", {"messages": CHAT, "temperature": -1}, "temperature"),
        ("/chat/completions", {"messages": CHAT, "top_p": 5}, "top_p"),
        ("/chat/completions", {"messages": CHAT, "n": 0}, "n"),
        ("/chat/completions", {"messages": CHAT, "n": -1}, "n"),
        ("/chat/completions", {"messages": CHAT, "n": 1000}, "n"),
        ("/completions", {"prompt": "1+1", "best_of": 3}, "best_of"),
        ("/chat/completions", {"messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("/chat/completions", {"messages": CHAT, "response_format": {"type": "json_object"}}, "response_format"),
        (
            "/chat/completions",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        ("/chat/completions", {"messages": CHAT, "top_logprobs": 3}, "top_logprobs"),
        ("/chat/completions", {"messages": CHAT, "frobnicate": 1}, "frobnicate"),
        ("/chat/completions", {"messages": CHAT, "temperature": 0.7, "seed": 3}, "seed"),
        ("/completions", {"prompt": "1+1", "stop": ["a"] * 5}, "stop"),
    ]
    out = [(path, json.dumps(body).encode(), field) for path, body, field in cases]
    out.append(("/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"))
    out.append(("/completions", b'{"prompt": "1+1", "lam": 1' + b"0" * 400 + b"}", "lam"))
    out.append(("/completions", b'{"prompt": "1+1", "lam": ', "body"))
    out.append(("/completions", b"[1, 2]", "body"))
    out.append(("/completions", b"[" * 100000 + b"]" * 100000, "body"))  # RecursionError in the JSON parser
    out.append(
        ("/completions", b'{"prompt": "1+1", "stream_options": {"include_usage": 1}}', "stream_options.include_usage")
    )
    return out


@pytest.mark.parametrize("case", range(len(hostile_cases())))
def test_hostile_request_gets_400_and_the_server_answers_the_next_one(server, client, reference, case):
    path, body, field = hostile_cases()[case]
    status, data = post(server, path, body)
    assert status == 400, (path, body[:200], status, data)
    assert_error(data, field)
    prompt, lam = GOOD
    got = client.completions.create(
        model="dami-pair", prompt=chat_text(reference[1], prompt), max_tokens=MAX_TOKENS, extra_body={"lam": lam}
    )
    assert got.choices[0].text == expected(reference, [prompt], [lam])[0]


def test_the_official_client_shows_the_message(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="dami-pair", messages=CHAT, n=0)
    assert "n: must be an integer" in str(err.value) and err.value.body["param"] == "n"


def test_n_gives_n_choices_at_the_request_lambda(client, reference):
    tok = reference[1]
    body = client.completions.create(
        model="dami-pair", prompt=chat_text(tok, PROMPTS[2]), max_tokens=MAX_TOKENS, n=3, extra_body={"lam": 0.35}
    )
    ref = expected(reference, [PROMPTS[2]], [0.35])[0]
    assert [c.index for c in body.choices] == [0, 1, 2] and all(c.text == ref for c in body.choices)  # greedy
    assert (
        body.usage.completion_tokens
        == 3
        * dk.generate(reference[0], tok, [PROMPTS[2]], [0.35], max_new_tokens=MAX_TOKENS, progress=False)[0].num_tokens
    )
    chunks = list(
        client.chat.completions.create(
            model="dami-pair",
            messages=[{"role": "user", "content": PROMPTS[3]}],
            max_tokens=MAX_TOKENS,
            n=2,
            stream=True,
            extra_body={"lam": 0.8},
        )
    )
    for index in (0, 1):
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == index)
        assert content == split_think(expected(reference, [PROMPTS[3]], [0.8])[0])[1]


def reference_logprobs(reference, prompt_ids: list[int], token_ids: list[int], lam: float):
    """[G, V] log-softmax of the reference copy at λ for each generated token."""
    import torch

    model = reference[0]
    with torch.no_grad(), dk.lambda_scope(model, lam):
        logits = model(torch.tensor([prompt_ids + token_ids[:-1]])).logits[0, len(prompt_ids) - 1 :]
    return torch.log_softmax(logits.double(), dim=-1)


@needs_pause
@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_equal_the_model_at_the_request_lambda(client, reference, stream):
    tok = reference[1]
    prompt_ids = encode_prompts(tok, [PROMPTS[5]])[0]
    kwargs = dict(
        model="dami-pair",
        messages=[{"role": "user", "content": PROMPTS[5]}],
        max_tokens=MAX_TOKENS,
        logprobs=True,
        top_logprobs=3,
        extra_body={"lam": 0.45},
    )
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    else:
        entries = client.chat.completions.create(**kwargs).choices[0].logprobs.content
    ref_tokens = dk.generate(reference[0], tok, [PROMPTS[5]], [0.45], max_new_tokens=MAX_TOKENS, progress=False)[0]
    ids = [
        tok.convert_tokens_to_ids(tok.tokenize(e.token)[0])
        if e.token not in tok.get_vocab()
        else tok.get_vocab()[e.token]
        for e in entries
    ]
    assert len(entries) == ref_tokens.num_tokens
    ref = reference_logprobs(reference, prompt_ids, ids, 0.45)
    for k, entry in enumerate(entries):
        assert entry.logprob == pytest.approx(float(ref[k, ids[k]]), abs=1e-4)
        assert [t.token for t in entry.top_logprobs][0] == entry.token  # greedy: the chosen token is the top one
        top = ref[k].topk(3)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)
    completion = client.completions.create(
        model="dami-pair",
        prompt=chat_text(tok, PROMPTS[5]),
        max_tokens=MAX_TOKENS,
        logprobs=2,
        extra_body={"lam": 0.45},
    )
    lp = completion.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx([e.logprob for e in entries], abs=1e-6)
    assert all(len(t) <= 2 for t in lp.top_logprobs) and "".join(lp.tokens).startswith(completion.choices[0].text[:1])


@pytest.mark.skipif(HAS_PAUSE, reason=f"transformers {transformers.__version__} has {PAUSE_API}: logprobs are served")
def test_logprobs_are_refused_without_the_engine_pause(server):
    status, data = post(server, "/chat/completions", json.dumps({"messages": CHAT, "logprobs": True}).encode())
    assert status == 400 and assert_error(data, "logprobs") and "5.24" in data["error"]["message"]


def test_stop_strings_end_the_text(client, reference):
    tok = reference[1]
    ref = expected(reference, [PROMPTS[6]], [1.0])[0]
    stop = ref[3:5]
    body = client.completions.create(
        model="dami-pair",
        prompt=chat_text(tok, PROMPTS[6]),
        max_tokens=MAX_TOKENS,
        stop=[stop],
        extra_body={"lam": 1.0},
    )
    assert body.choices[0].text == ref[: ref.find(stop)] and body.choices[0].finish_reason == "stop"


def test_many_concurrent_mixed_lambda_requests_after_hostile_ones(server, client, reference):
    """128 requests at 128 λ values from 16 clients, after the hostile cases (module order): every answer equal to
    dk.generate at its λ, and the engine never restarted."""
    n, clients, max_tokens = 128, 16, 24
    tok = reference[1]
    cases = [(PROMPTS[k % len(PROMPTS)], round(k / (n - 1), 4)) for k in range(n)]

    def one(case):
        prompt, lam = case
        return (
            client.completions.create(
                model="dami-pair", prompt=chat_text(tok, prompt), max_tokens=max_tokens, extra_body={"lam": lam}
            )
            .choices[0]
            .text
        )

    with ThreadPoolExecutor(clients) as pool:
        got = list(pool.map(one, cases))
    model = reference[0]
    refs = [
        r.text
        for r in dk.generate(
            model, tok, [c[0] for c in cases], [c[1] for c in cases], max_new_tokens=max_tokens, progress=False
        )
    ]
    assert got == refs
    assert server.served.engine.restarts == 0 and len(server.served.lambdas) == 0 and not server.served.inflight


# ---- API keys, metrics, and a worker that dies ----

KEY = "test-key-123"


@pytest.fixture(scope="module")
def keyed():
    """A server with an API key, on a pair loaded with extrapolation allowed."""
    from dami_kernels.serving import ServeOptions

    model, tok = load_pair_and_tokenizer(*pair_dirs(), progress=False, allow_extrapolation=True)
    app, served = build_app(
        model, tok, ServeOptions(api_key=KEY, cb_page_size=32, cb_num_blocks=64, cb_max_batch_tokens=256)
    )
    with ServerThread(app, served) as srv:
        yield srv


def get(server, path: str, headers=None):
    req = urllib.request.Request(server.base_url.removesuffix("/v1") + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), dict(err.headers)


def test_api_key_is_required_on_every_route_but_health(keyed, reference):
    auth = {"Authorization": f"Bearer {KEY}"}
    for path in ("/v1/models", "/metrics"):
        status, text, _ = get(keyed, path)
        assert status == 401 and json.loads(text)["error"]["code"] == "invalid_api_key"
        assert get(keyed, path, {"Authorization": "Bearer wrong"})[0] == 401
        assert get(keyed, path, auth)[0] == 200
    assert get(keyed, "/health")[0] == 200
    status, data = post(keyed, "/completions", b'{"prompt": "1+1"}')
    assert status == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.base_url, api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=keyed.base_url, api_key=KEY, max_retries=0, timeout=120)
    body = good.completions.create(
        model="dami-pair", prompt=chat_text(reference[1], PROMPTS[4]), max_tokens=MAX_TOKENS, extra_body={"lam": 1.3}
    )  # extrapolation allowed on this pair
    assert body.lam == 1.3 and body.choices[0].text == expected(reference, [PROMPTS[4]], [1.3])[0]
    status, data = post(keyed, "/completions", b'{"prompt": "1+1", "lam": 1.7976931348623157e308}', auth)
    assert status == 400 and assert_error(data, "lam") and "float32" in data["error"]["message"]
    assert good.completions.create(model="dami-pair", prompt="1+1", max_tokens=4, extra_body={"lam": 0.5}).choices


def test_metrics_count_requests_tokens_latency_and_lambda(keyed):
    auth = {"Authorization": f"Bearer {KEY}"}
    good = openai.OpenAI(base_url=keyed.base_url, api_key=KEY, max_retries=0, timeout=120)
    before = get(keyed, "/metrics", auth)[1]
    for lam in (0.0, 0.25, 1.0):
        good.completions.create(model="dami-pair", prompt="12+3", max_tokens=8, extra_body={"lam": lam})
    post(keyed, "/completions", b'{"prompt": ""}', auth)
    status, text, headers = get(keyed, "/metrics", auth)
    assert status == 200 and headers["content-type"].startswith("text/plain")

    def value(body, name):
        lines = [line for line in body.splitlines() if line.startswith(name + " ") or line.startswith(name + "{")]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    assert (
        value(text, 'dami_requests_total{route="/v1/completions",status="200"}')
        - value(before, 'dami_requests_total{route="/v1/completions",status="200"}')
        == 3
    )
    assert value(text, 'dami_requests_total{route="/v1/completions",status="400"}') >= 1
    assert value(text, "dami_generation_tokens_total") - value(before, "dami_generation_tokens_total") >= 3
    assert (
        value(text, "dami_time_to_first_token_seconds_count") - value(before, "dami_time_to_first_token_seconds_count")
        == 3
    )
    assert value(text, 'dami_lambda_bucket{le="0.3"}') - value(before, 'dami_lambda_bucket{le="0.3"}') == 2
    for name in (
        "dami_requests_running",
        "dami_requests_waiting",
        "dami_time_per_output_token_seconds_count",
        "dami_prompt_tokens_total",
        "dami_engine_restarts",
    ):
        assert name in text


def test_a_dead_worker_is_restarted_and_service_comes_back(keyed, reference):
    """A fault inside an engine step kills transformers' worker: the request in flight gets 503 with Retry-After,
    /health says so, the server starts a new engine, and later requests are answered exactly."""
    served = keyed.served
    model = served.engine.model
    good = openai.OpenAI(base_url=keyed.base_url, api_key=KEY, max_retries=0, timeout=120)
    calls = {"n": 0}

    def explode(module, args, kwargs):
        calls["n"] += 1
        raise RuntimeError("injected fault in the engine step")

    hook = model.register_forward_pre_hook(explode, with_kwargs=True)
    try:
        status, data = post(
            keyed, "/completions", b'{"prompt": "12+34", "max_tokens": 8}', {"Authorization": f"Bearer {KEY}"}
        )
    finally:
        hook.remove()
    assert calls["n"] >= 1
    assert status == 503 and data["error"]["type"] == "service_unavailable", (status, data)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and get(keyed, "/health")[0] != 200:
        time.sleep(0.1)
    status, text, _ = get(keyed, "/health")
    assert status == 200 and json.loads(text)["restarts"] >= 1 and "injected fault" in json.loads(text)["last_error"]
    tok = reference[1]
    for prompt, lam in ((PROMPTS[7], 0.0), (PROMPTS[8], 0.9)):
        body = good.completions.create(
            model="dami-pair", prompt=chat_text(tok, prompt), max_tokens=MAX_TOKENS, extra_body={"lam": lam}
        )
        assert body.choices[0].text == expected(reference, [prompt], [lam])[0]


def test_cli_refuses_a_port_in_use_and_a_missing_serve_extra(capsys, monkeypatch):
    import importlib.util
    import socket

    from dami_kernels.cli import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
        out, err = capsys.readouterr()
        assert f"127.0.0.1:{port}" in err and "--port" in err and "\n" not in err.strip()
        assert "no API key" in out and "loopback only" in out  # said at start, before listening
    finally:
        taken.close()
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "prometheus_client" else real(name, *a)
    )
    assert main(["serve"]) == 2
    assert 'pip install "dami_kernels[serve]"' in capsys.readouterr().err


def test_cli_refuses_an_unsupported_transformers(capsys, monkeypatch):
    import socket
    import sys

    from dami_kernels.cli import main

    monkeypatch.setattr(sys.modules["transformers"], "__version__", "5.99.0")
    taken = socket.socket()  # were the check to pass, the command would stop at the port, never serve
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    finally:
        taken.close()
    err = capsys.readouterr().err.strip()
    assert "5.17.0 to 5.25.0" in err and "5.99.0" in err and "\n" not in err, err
