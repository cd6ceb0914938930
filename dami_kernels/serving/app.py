"""The `dami serve` app: FastAPI routes of our own over the supervised continuous-batching engine.

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (streaming or not), `GET /v1/models`, `GET /metrics`
(Prometheus), `GET /health` (200 while the engine runs, 503 while it restarts; never needs a key). With an API
key every route but /health needs `Authorization: Bearer KEY` (401 otherwise). Every error body is OpenAI's
`{"error": {"message", "type", "param", "code"}}`: 4xx for a client's mistake, 503 (with Retry-After) while the
engine restarts, 500 only for a real server fault.

    app, served = build_app(model, tokenizer, ServeOptions(...))
    with ServerThread(app, served, port=0) as server:   # loopback, in this process (tests, benchmarks)
        ... http://127.0.0.1:{server.port}/v1 ...
    serve(model, tokenizer, options, sock)             # blocking, on a bound socket (the `dami serve` command)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import threading
import time
from dataclasses import dataclass, field

from fastapi import Request  # at module level: FastAPI resolves the routes' annotations here

from dami_kernels.serving.lambda_policy import DEFAULT_EFFORTS, LambdaPolicy, RequestLambdas
from dami_kernels.serving.protocol import APIError
from dami_kernels.validation import positive_int

DEFAULT_MODEL_ID = "dami-pair"
DEFAULT_MAX_N = 16
log = logging.getLogger("dami.serve")


@dataclass
class ServeOptions:
    """Server settings. default_lam: a number or "auto"; efforts: reasoning_effort level -> λ; estimator: None, or
    (method, estimator object) for "auto"; context_len: prompt + new tokens per request (None: the model's
    max_position_embeddings); cb_*: transformers' ContinuousBatchingConfig (None: its own defaults, which on a GPU
    size the KV cache from free memory); cuda_graphs: None (transformers decides), True or False; api_key: None
    (no authentication) or the key every route but /health needs; max_n: the largest `n` a request may ask."""

    model_id: str = DEFAULT_MODEL_ID
    default_lam: float | str = 0.0
    efforts: dict = field(default_factory=lambda: dict(DEFAULT_EFFORTS))
    estimator: tuple | None = None
    context_len: int | None = None
    cb_page_size: int | None = None
    cb_num_blocks: int | None = None
    cb_max_batch_tokens: int | None = None
    cb_max_requests: int | None = None
    cuda_graphs: bool | None = None
    api_key: str | None = None
    max_n: int = DEFAULT_MAX_N


@dataclass
class Served:
    """What `build_app` built, for inspection and shutdown."""

    engine: object  # PairEngine
    lambdas: RequestLambdas
    policy: LambdaPolicy
    auto: object | None  # AutoLambda
    context_len: int
    metrics: object  # ServerMetrics
    inflight: set = field(default_factory=set)  # request ids being served

    def shutdown(self) -> None:
        self.engine.shutdown()


def cb_kwargs_for(options: ServeOptions) -> dict:
    return {
        "page_size": options.cb_page_size,
        "num_blocks": options.cb_num_blocks,
        "max_batch_tokens": options.cb_max_batch_tokens,
        "max_requests_per_batch": options.cb_max_requests,
        "use_cuda_graph": options.cuda_graphs,
    }


def build_app(model, tokenizer, options: ServeOptions | None = None):
    """(FastAPI app, Served) for a pair loaded by `load_pair` and its tokenizer; starts the engine. Requests may
    hold at most `Served.context_len` tokens (prompt + new): options.context_len or the model's
    max_position_embeddings, and never more than the KV cache holds."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from dami_kernels.pair import lambda_state
    from dami_kernels.serving.cb_internals import require_engine_pause
    from dami_kernels.serving.engine import AutoLambda, PairEngine
    from dami_kernels.serving.handlers import Handlers
    from dami_kernels.serving.metrics import CONTENT_TYPE, ServerMetrics

    options = options or ServeOptions()
    if options.estimator is not None or options.default_lam == "auto":
        require_engine_pause('"lam": "auto" (--estimator)')
    if not hasattr(model, "init_continuous_batching"):
        raise ValueError(f"{type(model).__name__} has no continuous batching (init_continuous_batching)")
    positive_int(options.max_n, "max_n")
    policy = LambdaPolicy(
        options.default_lam,
        dict(options.efforts),
        lambda_state(model).allow_extrapolation,
        has_estimator=options.estimator is not None,
    )
    context = options.context_len or int(getattr(model.config.get_text_config(), "max_position_embeddings", 0) or 0)
    if context < 2:
        raise ValueError("context_len: give the context length (the model config has no max_position_embeddings)")
    lambdas = RequestLambdas(policy.default if isinstance(policy.default, float) else 0.0)
    engine = PairEngine(model, lambdas, cb_kwargs_for(options))
    context = min(context, engine.start())  # a request the KV cache cannot hold would never be scheduled
    auto = None if options.estimator is None else AutoLambda(engine, tokenizer, *options.estimator)
    served = Served(engine, lambdas, policy, auto, context, ServerMetrics(engine))
    handlers = Handlers(model, tokenizer, options, served)

    app = FastAPI(title="dami serve", docs_url=None, redoc_url=None, openapi_url=None)

    def error_response(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        message = str(err.detail)
        if err.status_code == 404:
            message = (
                f"{request.url.path} is not served by dami serve; use /v1/chat/completions, /v1/completions "
                "or /v1/models"
            )
        return error_response(APIError(err.status_code, message))

    @app.exception_handler(Exception)
    async def _server_fault(request: Request, err: Exception):
        log.exception("dami serve: unexpected error on %s", request.url.path)
        return error_response(APIError(500, f"internal server error ({type(err).__name__})"))

    @app.middleware("http")
    async def _auth_and_count(request: Request, call_next):
        route = request.url.path
        if options.api_key is not None and route != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {options.api_key}".encode()):
                served.metrics.requests.labels(route="unauthorized", status="401").inc()
                return error_response(
                    APIError(
                        401,
                        "missing or wrong API key: send Authorization: Bearer <key>",
                        code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                )
        try:
            response = await call_next(request)
        except Exception as err:  # noqa: BLE001 - answered as a server fault, counted below
            log.exception("dami serve: unexpected error on %s", route)
            response = error_response(APIError(500, f"internal server error ({type(err).__name__})"))
        known = route in ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions")
        served.metrics.requests.labels(route=route if known else "other", status=str(response.status_code)).inc()
        return response

    @app.get("/health")
    async def health():
        engine_state = "running" if engine.alive else ("restarting" if engine.restarting else "stopped")
        body = {
            "status": "ok" if engine.alive else "unavailable",
            "engine": engine_state,
            "restarts": engine.restarts,
            "last_error": engine.last_error,
        }
        return JSONResponse(
            body, status_code=200 if engine.alive else 503, headers={} if engine.alive else {"Retry-After": "1"}
        )

    @app.get("/metrics")
    async def metrics():
        return Response(served.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": options.model_id, "object": "model", "created": 0, "owned_by": "dami"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await handlers.handle("chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handlers.handle("completion", request)

    return app, served


class ServerThread:
    """Run the app with uvicorn in a background thread on a loopback socket (port 0: any free port)."""

    def __init__(
        self, app, served: Served | None = None, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ):
        self.served = served
        self.sock = bind_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn_server(app, log_level)
        self.thread = threading.Thread(target=self._run, name="dami-serve", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
        if self.served is not None:
            self.served.shutdown()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to host:port; ValueError (one line) if the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ValueError(
            f"cannot listen on {host}:{port}: {err.strerror or err} (is another server using the "
            "port? choose another with --port)"
        ) from None
    return sock


# An idle keep-alive connection stays open this long. Longer than the clients' own idle expiry (httpx, which the
# openai client uses, drops a pooled connection after 5 s idle): were both 5 s, a client could send a request on a
# connection at the instant the server closes it, and get "connection reset by peer" for a request never read.
KEEP_ALIVE_S = 30


def uvicorn_server(app, log_level: str):
    """The uvicorn server for the app (not started)."""
    import uvicorn

    return uvicorn.Server(
        uvicorn.Config(
            app, log_level=log_level, timeout_graceful_shutdown=5, lifespan="off", timeout_keep_alive=KEEP_ALIVE_S
        )
    )


def serve(model, tokenizer, options: ServeOptions, sock: socket.socket, log_level: str = "info") -> None:
    """Serve the pair on a bound socket until interrupted (blocking)."""
    app, served = build_app(model, tokenizer, options)
    try:
        server = uvicorn_server(app, log_level)
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        served.shutdown()
        sock.close()
