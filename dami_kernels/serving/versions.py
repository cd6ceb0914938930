"""What differs between the transformers releases `dami serve` runs on (5.17 and 5.24 are tested), found by
feature detection on transformers' own classes, never by version strings. Each switch is one small function:

- `cb_config`: the KV cache page size is `ContinuousBatchingConfig(page_size=)` in 5.24, `block_size=` in 5.17.
- `max_single_request_tokens`: 5.24 has `infer_max_single_request_tokens(cache)`; 5.17's cache answers it from
  its `blocks_needed` and `num_blocks` (one request's blocks on an empty cache).
- `model_manager_kwargs`: 5.24's `ModelManager` takes `continuous_batching=`, 5.17's does not.
- `optional_server_handlers`: 5.24's `build_server` has a `/v1/systemone` route (`systemone_handler=`).
- `chat_reads_max_completion_tokens`: 5.17's chat handler refuses `max_completion_tokens` (the chat field that
  replaces `max_tokens` in the OpenAI API); the pair's chat handler then passes it on as `max_tokens`.
- `require_engine_pause`: `"lam": "auto"` runs the estimator while the engine is paused
  (`ContinuousBatchingManager.pause`, which 5.17 lacks): the server refuses to start an estimator without it.
"""
from __future__ import annotations

import dataclasses
import inspect

PAUSE_API = "ContinuousBatchingManager.pause"


def cb_config(page_size: int | None = None, **kwargs):
    """transformers' ContinuousBatchingConfig; page_size (KV cache tokens per page/block) goes to the field
    this release has. Other kwargs (None values dropped) are passed as they are."""
    from transformers import ContinuousBatchingConfig

    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    if page_size is not None:
        kwargs["page_size" if "page_size" in fields else "block_size"] = page_size
    return ContinuousBatchingConfig(**{k: v for k, v in kwargs.items() if v is not None})


def max_single_request_tokens(cache) -> int:
    """The most tokens (prompt + new) one request can hold in the engine's paged KV cache when it is empty."""
    try:
        from transformers.generation.continuous_batching.model_runner import infer_max_single_request_tokens
    except ImportError:  # 5.17: every block of a request is counted once per attention group that needs one
        low, high = 0, cache.num_blocks  # the most blocks of one request for which the cache has room
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if cache.blocks_needed(mid, 0) <= cache.num_blocks else (low, mid - 1)
        return low * cache.block_size
    return infer_max_single_request_tokens(cache)


def model_manager_kwargs() -> dict:
    """Extra ModelManager kwargs: continuous batching on, where the manager takes that switch."""
    from transformers.cli.serving.model_manager import ModelManager

    return {"continuous_batching": True} if "continuous_batching" in inspect.signature(ModelManager).parameters else {}


def optional_server_handlers(make_not_served) -> dict:
    """Handlers for the routes of `build_server` that only some releases have (`dami serve` serves none of them):
    {kwarg: make_not_served(route)}."""
    from transformers.cli.serving.server import build_server

    params = inspect.signature(build_server).parameters
    return {"systemone_handler": make_not_served("/v1/systemone")} if "systemone_handler" in params else {}


def chat_reads_max_completion_tokens() -> bool:
    """Whether transformers' chat handler takes `max_completion_tokens` (5.24) or refuses it as unused (5.17)."""
    from transformers.cli.serving.chat_completion import ChatCompletionHandler

    return "max_completion_tokens" not in getattr(ChatCompletionHandler, "_unused_fields", ())


def has_engine_pause() -> bool:
    from transformers.generation.continuous_batching.continuous_api import ContinuousBatchingManager

    return hasattr(ContinuousBatchingManager, "pause")


def require_engine_pause(what: str) -> None:
    """ValueError (one line, naming the transformers release needed) if the engine cannot pause."""
    if not has_engine_pause():
        import transformers

        raise ValueError(f"{what} needs a transformers release with {PAUSE_API} (5.24 has it; it runs the λ(q) "
                         f"estimator between engine steps), installed: transformers {transformers.__version__}")
