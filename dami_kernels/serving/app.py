"""Build and run the `dami serve` app: transformers' FastAPI server (`build_server`) with the pair's model
manager, its continuous-batching generation state and the λ-aware handlers.

    app, served = build_app(model, tokenizer, ServeOptions(...))
    with ServerThread(app, served, port=0) as server:   # loopback, in this process (tests, benchmarks)
        ... http://127.0.0.1:{server.port}/v1 ...
    serve(model, tokenizer, options, host, port)         # blocking (the `dami serve` command)
"""
from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass, field

from dami_kernels.serving.lam_policy import DEFAULT_EFFORTS, LamPolicy
from dami_kernels.serving.rows import RequestLambdas

DEFAULT_MODEL_ID = "dami-pair"


@dataclass
class ServeOptions:
    """Server settings. default_lam: a number or "auto"; efforts: reasoning_effort level -> λ; estimator:
    None, or (method, estimator object) for "auto"; context_len: prompt + new tokens per request (None:
    the model's max_position_embeddings); cb_*: transformers' ContinuousBatchingConfig (None: its own
    defaults, which on a GPU size the KV cache from free memory); cuda_graphs: None (transformers decides),
    True or False; response_template: set as the tokenizer's `response_template` (how chat replies are
    split into reasoning_content and content; None: the tokenizer's own or transformers' fallback)."""

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
    response_template: dict | None = None


@dataclass
class Served:
    """What `build_app` built, for inspection and shutdown."""

    generation: object  # PairGenerationState
    lambdas: RequestLambdas
    policy: LamPolicy
    auto: object | None  # AutoLambda
    context_len: int

    @property
    def engine(self):
        return self.generation.manager

    def shutdown(self) -> None:
        self.generation.shutdown()


def cb_config_for(options: ServeOptions):
    """transformers' ContinuousBatchingConfig for these options; async batching off (see rows.py)."""
    from dami_kernels.serving.versions import cb_config

    return cb_config(page_size=options.cb_page_size, num_blocks=options.cb_num_blocks,
                     max_batch_tokens=options.cb_max_batch_tokens, max_requests_per_batch=options.cb_max_requests,
                     use_cuda_graph=options.cuda_graphs, use_async_batching=False)


def build_app(model, tokenizer, options: ServeOptions | None = None):
    """(FastAPI app, Served) for a pair loaded by `load_pair` and its tokenizer. The engine is started here,
    with the model's generation config. Requests may hold at most `Served.context_len` tokens (prompt + new):
    options.context_len or the model's max_position_embeddings, and never more than the KV cache holds."""
    from transformers.cli.serving.server import build_server

    from dami_kernels.hf import lambda_state
    from dami_kernels.serving.engine import AutoLambda, PairGenerationState
    from dami_kernels.serving.handlers import NotServedHandler, PairChatCompletionHandler, PairCompletionHandler
    from dami_kernels.serving.models import PairModelManager
    from dami_kernels.serving.versions import optional_server_handlers, require_engine_pause

    options = options or ServeOptions()
    if options.estimator is not None or options.default_lam == "auto":
        require_engine_pause('"lam": "auto" (--estimator)')
    if options.response_template is not None:
        tokenizer.response_template = options.response_template
    if not hasattr(model, "init_continuous_batching"):
        raise ValueError(f"{type(model).__name__} has no continuous batching (init_continuous_batching)")
    state = lambda_state(model)
    policy = LamPolicy(options.default_lam, dict(options.efforts), state.allow_extrapolation,
                       has_estimator=options.estimator is not None)
    context = options.context_len or int(getattr(model.config.get_text_config(), "max_position_embeddings", 0) or 0)
    if context < 2:
        raise ValueError("context_len: give the context length (the model config has no max_position_embeddings)")
    lambdas = RequestLambdas(policy.default if isinstance(policy.default, float) else 0.0)
    generation = PairGenerationState(cb_config_for(options), lambdas)
    context = min(context, generation.manager.start(model))  # a request the KV cache cannot hold stops the engine
    auto = None
    if options.estimator is not None:
        method, estimator = options.estimator
        auto = AutoLambda(model, tokenizer, method, estimator, generation.manager)
    models = PairModelManager(model, tokenizer, options.model_id, device=str(model.device))
    chat = PairChatCompletionHandler(model_manager=models, generation_state=generation)
    completion = PairCompletionHandler(model_manager=models, generation_state=generation)
    for handler in (chat, completion):
        handler.setup_lambda(policy, lambdas, context, auto)
    app = build_server(models, chat, completion_handler=completion,
                       response_handler=NotServedHandler("/v1/responses"),
                       transcription_handler=NotServedHandler("/v1/audio/transcriptions"),
                       generation_state=generation, **optional_server_handlers(NotServedHandler))
    return app, Served(generation, lambdas, policy, auto, context)


class ServerThread:
    """Run the app with uvicorn in a background thread on a loopback socket (port 0: any free port)."""

    def __init__(self, app, served: Served | None = None, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning"):
        import uvicorn

        self.served = served
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self._run, name="dami-serve", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.thread.start()
        waited = 0.0
        while not self.server.started:
            if not self.thread.is_alive() or waited > timeout:
                raise RuntimeError("the server did not start")
            threading.Event().wait(0.02)
            waited += 0.02
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


def serve(model, tokenizer, options: ServeOptions, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    """Serve the pair until interrupted (blocking)."""
    import uvicorn

    app, served = build_app(model, tokenizer, options)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        served.shutdown()
