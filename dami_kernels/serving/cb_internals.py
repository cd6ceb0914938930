"""Every transformers internal that `dami serve` uses, in one module: an upgrade of transformers breaks this
file or nothing. Tested on transformers 5.17 and 5.25 (`TESTED_TRANSFORMERS`, the bounds in setup.py).

What it uses, and why:
- the continuous-batching manager's documented API (`model.init_continuous_batching`, `start`, `add_request`,
  `register_result_handler`, `cancel_request`, `pause`, `stop`) is public; the attributes below are not:
- `manager.logit_processor` (a `ContinuousBatchingLogitsProcessorList`): swapped for `LambdaRowsProcessorList`,
  which also writes the model's λ per packed token row every step (`prepare_tensor_args` is the engine's
  per-request, per-step channel, called on the host before every forward, outside any CUDA graph);
- `manager.input_queue` (a queue of `RequestState`): swapped for `LambdaStampingQueue`, which copies each
  request's λ into the engine's own request state (`logit_processor_kwargs["lam"]`, which the engine keeps
  through scheduling, offloading and forks, and broadcasts to tensor-parallel ranks);
- `manager.background_thread_status.fatal_error`, `manager.batch_processor.cache` and `.scheduler`: whether the
  worker died, how long one request may be, how many requests run and wait;
- `ContinuousBatchingConfig` field names (`page_size` in 5.25, `block_size` in 5.17) and `pause` (5.24+).

The engine's own warmup requests carry no λ and run at the default λ (their outputs are discarded).
"""

from __future__ import annotations

import dataclasses
import queue

import torch
from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessorList
from transformers.generation.continuous_batching.requests import RequestState

from dami_kernels.modules import InterpLinear
from dami_kernels.pair import lambda_state
from dami_kernels.serving.lambda_policy import RequestLambdas

# The transformers releases the server is tested on (CI runs both); setup.py bounds transformers to this range.
TESTED_TRANSFORMERS = ("5.17.0", "5.25.0")
PAUSE_API = "ContinuousBatchingManager.pause"
LAM_KWARG = "lam"  # the request state's logit_processor_kwargs key that holds its λ


class LambdaStampingQueue(queue.Queue):
    """The manager's input queue, which writes each request's registered λ into its request state
    (``logit_processor_kwargs["lam"]``) as `add_request` queues it."""

    def __init__(self, base: queue.Queue, lambdas: RequestLambdas):
        super().__init__(maxsize=base.maxsize)
        self.lambdas = lambdas
        while not base.empty():  # (nothing is queued before the manager starts, but keep any that is)
            self.put(base.get_nowait())

    def put(self, item, block=True, timeout=None):
        if isinstance(item, RequestState) and LAM_KWARG not in item.logit_processor_kwargs:
            item.logit_processor_kwargs[LAM_KWARG] = self.lambdas.lam(item.request_id)
        super().put(item, block, timeout)


class LambdaRowsProcessorList(ContinuousBatchingLogitsProcessorList):
    """The engine's logits-processor list (same processors, same behaviour) that also sets λ per packed row.

    `prepare_tensor_args(requests_in_batch, arg_storage)` is called once per step with the step's
    requests in batch order (`FutureRequestState`: `.state.request_id`, `.query_length`,
    `.has_new_token`). Row λ: each request's λ repeated over its query tokens, [T]. Output-row λ (only
    when the model's output layer sees the kept logits rows, `output_rows`): the λ of the requests that
    get a new token, in order, [L]; the engine reads the logits of exactly those rows.
    """

    def __init__(self, base: ContinuousBatchingLogitsProcessorList, model, lambdas: RequestLambdas, output_rows: bool):
        self.__dict__.update(base.__dict__)  # the engine's processors and their kwargs, unchanged
        self.lam_state = lambda_state(model)
        self.lambdas = lambdas
        self.output_rows = output_rows
        self.steps = 0
        self.mixed_steps = 0  # steps whose requests ran at more than one λ

    def check_kwargs(self, kwargs: dict) -> None:
        """The engine's check of a new request's kwargs, which knows nothing of "lam" (ours)."""
        super().check_kwargs({k: v for k, v in kwargs.items() if k != LAM_KWARG})

    def lam_of(self, state) -> float:
        """A request's λ: the one it carries, else (engine warmup) the registry's default."""
        lam = state.logit_processor_kwargs.get(LAM_KWARG)
        return self.lambdas.lam(state.request_id) if lam is None else lam

    def prepare_tensor_args(self, requests_in_batch, arg_storage: torch.Tensor) -> torch.Tensor:
        out = super().prepare_tensor_args(requests_in_batch, arg_storage)
        state = self.lam_state
        # arg_storage has one column per token of the engine's largest batch: size the λ buffers once, so
        # that no later step reallocates them under a captured CUDA graph.
        state.reserve_rows(arg_storage.shape[-1])
        lams = [self.lam_of(f.state) for f in requests_in_batch]
        counts = torch.tensor([f.query_length for f in requests_in_batch], dtype=torch.long)
        rows = torch.tensor(lams, dtype=torch.float32).repeat_interleave(counts)
        kept = None
        if self.output_rows:
            # A step where no request gets a token still computes (and discards) one logits row per request.
            kept = [lam for lam, f in zip(lams, requests_in_batch, strict=True) if f.has_new_token] or lams[:1]
        state.set_rows(rows, kept)
        if state.buf.is_cuda:  # the engine's forward runs on its own stream: make the λ writes land first
            torch.cuda.current_stream(state.buf.device).synchronize()
        self.steps += 1
        self.mixed_steps += len(set(lams)) > 1
        return out


def attach_lambda_rows(manager, model, lambdas: RequestLambdas) -> LambdaRowsProcessorList:
    """Make a `ContinuousBatchingManager` (from `model.init_continuous_batching`, not started yet) run every
    step at its requests' λ: swaps its `logit_processor` (λ rows per step) and its `input_queue` (λ into each
    request state). Marks the model's output layer to read the output rows when the engine keeps
    only the logits rows (the model takes `logits_to_keep`). Returns the installed list."""
    if manager.batch_processor is not None:
        raise ValueError("attach the λ rows before the manager starts (its batch processor already exists)")
    if manager.continuous_batching_config.allow_block_sharing:
        raise ValueError(
            "prefix sharing must be off: a KV cache block computed at one λ would be reused by a request "
            "at another λ (ContinuousBatchingConfig(allow_block_sharing=False))"
        )
    if manager.continuous_batching_config.use_async_batching:
        raise ValueError(
            "async batching must be off: the next step's λ rows would be written while the current "
            "step still reads them (ContinuousBatchingConfig(use_async_batching=False))"
        )
    out_layer = model.get_output_embeddings()
    keeps_logits_rows = hasattr(model, "_supports_logits_to_keep") and model._supports_logits_to_keep()
    output_rows = isinstance(out_layer, InterpLinear) and keeps_logits_rows
    if isinstance(out_layer, InterpLinear):
        out_layer.output_rows = output_rows
    rows_list = LambdaRowsProcessorList(manager.logit_processor, model, lambdas, output_rows)
    manager.logit_processor = rows_list
    manager.input_queue = LambdaStampingQueue(manager.input_queue, lambdas)
    return rows_list


def cb_config(page_size: int | None = None, **kwargs):
    """transformers' ContinuousBatchingConfig; page_size (KV cache tokens per page) goes to the field this release
    has (`page_size` in 5.25, `block_size` in 5.17). Other kwargs (None values dropped) are passed as they are."""
    from transformers import ContinuousBatchingConfig

    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    if page_size is not None:
        kwargs["page_size" if "page_size" in fields else "block_size"] = page_size
    return ContinuousBatchingConfig(**{k: v for k, v in kwargs.items() if v is not None})


def max_single_request_tokens(manager) -> int:
    """The most tokens (prompt + new) one request can hold in the started engine's paged KV cache when it is
    empty: a longer request could never be scheduled."""
    cache = manager.batch_processor.cache
    try:
        from transformers.generation.continuous_batching.model_runner import infer_max_single_request_tokens
    except ImportError:  # 5.17: every block of a request is counted once per attention group that needs one
        low, high = 0, cache.num_blocks  # the most blocks of one request for which the cache has room
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if cache.blocks_needed(mid, 0) <= cache.num_blocks else (low, mid - 1)
        return low * cache.block_size
    return infer_max_single_request_tokens(cache)


def engine_started(manager) -> bool:
    """Whether the started worker has built its batch processor (its KV cache exists)."""
    return manager.batch_processor is not None


def engine_fatal_error(manager) -> BaseException | None:
    """The error that stopped the manager's worker, or None while it has none."""
    return manager.background_thread_status.fatal_error


def engine_load(manager) -> tuple[int, int]:
    """(requests running, requests waiting) in the engine's scheduler; (0, 0) before it started."""
    processor = manager.batch_processor
    if processor is None:
        return 0, 0
    scheduler = processor.scheduler
    return len(scheduler.active_requests), len(scheduler.waiting_requests)


def forget_result_handler(manager, request_id: str) -> None:
    """Drop a cancelled request's result handler (transformers drops it only when the request finishes)."""
    router = manager.output_router
    with router._lock:
        router.result_handlers.pop(request_id, None)


def sampling_processor_keys(manager) -> dict:
    """The per-request sampling kwargs the engine takes (name -> type), e.g. temperature, top_k, top_p."""
    return dict(getattr(manager.logit_processor, "supported_keys", {}))


def has_engine_pause() -> bool:
    from transformers.generation.continuous_batching.continuous_api import ContinuousBatchingManager

    return hasattr(ContinuousBatchingManager, "pause")


def require_engine_pause(what: str) -> None:
    """ValueError (one line, naming the transformers release needed) if the engine cannot pause."""
    if not has_engine_pause():
        import transformers

        raise ValueError(
            f"{what} needs a transformers release with {PAUSE_API} (5.24 has it; the model runs "
            f"between engine steps), installed: transformers {transformers.__version__}"
        )
