"""`dami serve`: an OpenAI-compatible server for a pair, where every request runs at its own λ.

    dami serve --instruct DIR --thinking DIR [--port 8000] [--estimator conf|pref] [--api-key KEY]

On transformers' continuous-batching engine: /v1/chat/completions, /v1/completions (streaming or not),
/v1/models, /metrics (Prometheus) and /health. A request picks its λ with `"lam": 0.3` (through the openai
client's extra_body), `"lam": "auto"` (the --estimator chooses), or `reasoning_effort` low / medium / high
(--effort-low/--effort-medium/--effort-high); otherwise --default-lam. Responses report the λ used (field
`lam`, header x-dami-lam). Without --instruct/--thinking it serves the shipped testbed pair. Without an API
key (--api-key or $DAMI_API_KEY) it listens on 127.0.0.1 only, unless --host is given.
"""

from __future__ import annotations

import os

from dami_kernels.cli.common import add_pair_args
from dami_kernels.validation import positive_int

SERVE_MODULES = ("fastapi", "uvicorn", "prometheus_client")

# KV cache and batch sizes on the CPU, where transformers would size the cache from free RAM.
CPU_CB_DEFAULTS = {"cb_page_size": 64, "cb_num_blocks": 64, "cb_max_batch_tokens": 1024}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="OpenAI-compatible server with a λ per request", description=__doc__.splitlines()[0]
    )
    add_pair_args(p, default_testbed=True)
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="listen port (default 8000)")
    p.add_argument(
        "--api-key",
        default=None,
        help="require Authorization: Bearer KEY on every route but /health (default: $DAMI_API_KEY, else no key)",
    )
    p.add_argument("--max-n", type=int, default=16, help="the largest n (choices per request) accepted (default 16)")
    p.add_argument("--model-name", default="dami-pair", help="the model name clients send (default dami-pair)")
    p.add_argument(
        "--estimator",
        choices=["conf", "pref"],
        default=None,
        help='λ(q) estimator for "lam": "auto" (default: none, "auto" is refused)',
    )
    p.add_argument(
        "--estimator-dir",
        default=None,
        help="trained estimators (dami estimate train); default: the shipped testbed ones (testbed pair only)",
    )
    p.add_argument("--default-lam", default="0", help='λ of requests that give none: a number or "auto" (default 0)')
    for level, value in (("low", 0.0), ("medium", 0.5), ("high", 1.0)):
        p.add_argument(
            f"--effort-{level}", type=float, default=value, help=f'λ for reasoning_effort "{level}" (default {value})'
        )
    p.add_argument(
        "--context-len",
        type=int,
        default=None,
        help="prompt + new tokens per request (default: the model's max_position_embeddings)",
    )
    p.add_argument(
        "--cb-page-size",
        type=int,
        default=None,
        help="KV cache page size in tokens (default: 64 on the CPU, else transformers')",
    )
    p.add_argument(
        "--cb-num-blocks",
        type=int,
        default=None,
        help="KV cache blocks (default: 64 on the CPU, else sized from free memory by transformers)",
    )
    p.add_argument(
        "--cb-max-batch-tokens",
        type=int,
        default=None,
        help="tokens per engine step (default: 1024 on the CPU, else transformers')",
    )
    p.add_argument(
        "--cb-max-requests", type=int, default=None, help="requests per engine step (default: transformers')"
    )
    p.add_argument(
        "--cuda-graphs",
        choices=["auto", "on", "off"],
        default="auto",
        help="CUDA graphs in the engine (auto: transformers decides)",
    )
    p.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    p.set_defaults(func=run)


def options_from_args(args, testbed: bool, device_type: str):
    """ServeOptions from the parsed arguments (estimator loaded, λ values checked later by LambdaPolicy)."""
    from dami_kernels.serving import ServeOptions

    default = args.default_lam.strip()
    if default != "auto":
        try:
            default = float(default)
        except ValueError:
            raise ValueError(f'--default-lam must be a number or "auto", got {args.default_lam!r}') from None
    estimator = None
    if args.estimator is not None:
        if args.estimator_dir is None and not testbed:
            raise ValueError(
                "--estimator needs --estimator-dir for a pair other than the shipped testbed "
                "(train one with `dami estimate train`)"
            )
        from dami_kernels.estimators.store import load_estimator

        estimator = (args.estimator, load_estimator(args.estimator, args.estimator_dir))
    elif args.estimator_dir is not None:
        raise ValueError("--estimator-dir needs --estimator conf|pref")
    sizes = {k: getattr(args, k) for k in CPU_CB_DEFAULTS}
    sizes["cb_max_requests"] = args.cb_max_requests
    for key, value in sizes.items():
        if value is not None:
            positive_int(value, "--" + key.replace("_", "-"))
    if device_type == "cpu":
        sizes = {k: (CPU_CB_DEFAULTS.get(k) if v is None else v) for k, v in sizes.items()}
    api_key = args.api_key if args.api_key is not None else os.environ.get("DAMI_API_KEY") or None
    if api_key is not None and (not api_key.strip() or not api_key.isprintable() or " " in api_key):
        raise ValueError("--api-key must be a non-empty printable string without spaces")
    return ServeOptions(
        model_id=args.model_name,
        default_lam=default,
        efforts={"low": args.effort_low, "medium": args.effort_medium, "high": args.effort_high},
        estimator=estimator,
        context_len=None if args.context_len is None else positive_int(args.context_len, "--context-len"),
        cuda_graphs={"auto": None, "on": True, "off": False}[args.cuda_graphs],
        api_key=api_key,
        max_n=positive_int(args.max_n, "--max-n"),
        **sizes,
    )


def check_serving_stack() -> None:
    """ValueError (one line) unless the serve extra and a supported transformers release are installed."""
    import importlib.util

    missing = [m for m in SERVE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f'dami serve needs {", ".join(missing)}: pip install "dami_kernels[serve]"')
    import transformers

    from dami_kernels.serving.cb_internals import TESTED_TRANSFORMERS

    def minor(version: str) -> tuple:  # (major, minor): patch releases of a tested minor are accepted
        return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())

    low, high = TESTED_TRANSFORMERS
    if not minor(low) <= minor(transformers.__version__) <= minor(high):
        raise ValueError(
            f"dami serve supports transformers {low} to {high}; installed: {transformers.__version__} "
            f'(pip install "transformers>={low},<={high}")'
        )
    try:
        import dami_kernels.serving.cb_internals  # noqa: F401 - the internals it needs import on this release
    except ImportError as err:
        raise ValueError(f"dami serve cannot use transformers {transformers.__version__}: {err}") from None


def run(args) -> int:
    from dami_kernels.cli.common import load_from_args, pair_dirs
    from dami_kernels.testbed.threads import is_testbed_pair

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    check_serving_stack()
    from dami_kernels.serving import bind_socket, serve
    from dami_kernels.serving.lambda_policy import LambdaPolicy

    testbed = is_testbed_pair(*pair_dirs(args))
    device_type = (args.device or "").split(":")[0]
    if not device_type:
        import torch

        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    options = options_from_args(args, testbed, device_type)
    LambdaPolicy(
        options.default_lam,
        dict(options.efforts),
        args.allow_extrapolation,
        has_estimator=options.estimator is not None,
    )  # bad λ values fail before the pair loads
    if options.estimator is not None:
        from dami_kernels.serving.cb_internals import require_engine_pause

        require_engine_pause("dami serve --estimator")  # ... and so does a transformers that cannot serve "auto"
    host = args.host or "127.0.0.1"
    if options.api_key is None:
        where = (
            "loopback only (give --host to listen elsewhere)"
            if args.host is None
            else f"{host}, which anyone who reaches it may use"
        )
        print(f"dami serve: no API key (--api-key or $DAMI_API_KEY): listening on {where}", flush=True)
    sock = bind_socket(host, args.port)  # a port in use fails here, before the pair loads
    try:
        model, tokenizer = load_from_args(args)
    except BaseException:
        sock.close()
        raise
    print(
        f"dami serve: {args.model_name} on http://{host}:{sock.getsockname()[1]}/v1 "
        f"(default λ {options.default_lam}, estimator {args.estimator or 'none'})",
        flush=True,
    )
    serve(model, tokenizer, options, sock, log_level=args.log_level)
    return 0
