"""The one extension of transformers' continuous-batching engine: a λ for every packed token row, every step.

The engine (`transformers.generation.continuous_batching`) packs the query tokens of the scheduled requests
into one [1, T] batch. Before every forward, on the host and outside any CUDA graph,
`ContinuousBatchingIOs.prepare_batch_tensors` hands the step's requests, in batch order and each with its
query length, to its logits-processor list (`ContinuousBatchingLogitsProcessorList.prepare_tensor_args`,
the engine's per-request, per-step channel). `LambdaRowsProcessorList` subclasses that list: it does what
the list does, then writes the model's λ per packed token row, and per kept logits row, with
`LambdaState.set_rows`. Nothing of the engine is copied or patched; the list is swapped on the manager
(its public `logit_processor` attribute) before the manager starts.

Each request carries its λ inside the engine's own request state, in `logit_processor_kwargs["lam"]` (the
per-request dict the engine keeps through scheduling, offloading, soft resets and forks, and broadcasts to
every tensor-parallel rank). The server registers the λ by request id in `RequestLambdas`; the manager's
input queue (`LambdaStampingQueue`, swapped on its public `input_queue` attribute) copies it into the request
state as `add_request` queues it. The engine's own warmup requests carry no λ and run at the default λ
(their outputs are discarded).
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import torch
from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessorList
from transformers.generation.continuous_batching.requests import RequestState

from dami_kernels.hf import lambda_state
from dami_kernels.modules import InterpLinear


LAM_KWARG = "lam"  # the request state's logit_processor_kwargs key that holds its λ


@dataclass(frozen=True)
class ServedLambda:
    """The λ a request runs at, and where it came from (see `LamChoice.source`)."""

    lam: float
    source: str


class RequestLambdas:
    """λ of the requests in flight, by request id (thread-safe: the server registers, the engine reads)."""

    def __init__(self, default: float = 0.0):
        self.default = float(default)
        self._by_id: dict[str, ServedLambda] = {}
        self._lock = threading.Lock()

    def register(self, request_id: str, served: ServedLambda) -> None:
        """Record a request's λ; ValueError if that id is already in flight."""
        with self._lock:
            if request_id in self._by_id:
                raise ValueError(f"request id {request_id!r} is already in flight")
            self._by_id[request_id] = served

    def release(self, request_id: str) -> None:
        with self._lock:
            self._by_id.pop(request_id, None)

    def lookup(self, request_id) -> ServedLambda | None:
        return self._by_id.get(request_id)

    def lam(self, request_id) -> float:
        served = self._by_id.get(request_id)
        return self.default if served is None else served.lam

    def __len__(self) -> int:
        return len(self._by_id)


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

    def __init__(self, base: ContinuousBatchingLogitsProcessorList, model, lambdas: RequestLambdas,
                 output_rows: bool):
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
            kept = [lam for lam, f in zip(lams, requests_in_batch) if f.has_new_token] or lams[:1]
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
    if manager.continuous_batching_config.use_async_batching:
        raise ValueError("async batching must be off: the next step's λ rows would be written while the current "
                         "step still reads them (ContinuousBatchingConfig(use_async_batching=False))")
    out_layer = model.get_output_embeddings()
    keeps_logits_rows = hasattr(model, "_supports_logits_to_keep") and model._supports_logits_to_keep()
    output_rows = isinstance(out_layer, InterpLinear) and keeps_logits_rows
    if isinstance(out_layer, InterpLinear):
        out_layer.output_rows = output_rows
    rows_list = LambdaRowsProcessorList(manager.logit_processor, model, lambdas, output_rows)
    manager.logit_processor = rows_list
    manager.input_queue = LambdaStampingQueue(manager.input_queue, lambdas)
    return rows_list
