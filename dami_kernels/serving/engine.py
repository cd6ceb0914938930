"""The generation side of `dami serve`: transformers' continuous-batching manager (its documented API:
`model.init_continuous_batching`, `add_request`, `register_result_handler`, `cancel_request`, `pause`) with the λ
rows attached, supervised: if its worker dies, in-flight requests fail with `EngineDown` (HTTP 503) and a new
manager starts.

    engine = PairEngine(model, lambdas, cb_kwargs)
    context = engine.start()                    # tokens (prompt + new) one request may hold
    async for output in engine.generate(rid, prompt_ids, max_new_tokens, sampling, served): ...
    with engine.model_session(lam): model(...)  # the engine paused: the model runs outside it (auto λ, logprobs)
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from contextlib import contextmanager

import torch

from dami_kernels.serving import cb_internals as cbi
from dami_kernels.serving.lambda_policy import RequestLambdas, ServedLambda

log = logging.getLogger("dami.serve")

# Placeholders in the engine's generation config, so that transformers builds its per-request temperature, top-k
# and top-p processors; every request then passes its own three values (greedy: top_k = 1).
_SAMPLING_PLACEHOLDERS = {"do_sample": True, "temperature": 0.5, "top_k": 50, "top_p": 0.5}


class EngineDown(RuntimeError):
    """The engine's worker died (or is restarting): the request may be retried."""

    retry_after = 1


class RequestFailed(RuntimeError):
    """The engine failed this request only (it keeps serving the others)."""


class PairEngine:
    """One supervised continuous-batching engine for the one pair the server holds.

    lambdas: the registry the λ rows read; cb_kwargs: ContinuousBatchingConfig fields (`cb_internals.cb_config`).
    """

    def __init__(self, model, lambdas: RequestLambdas, cb_kwargs: dict, poll_s: float = 0.1):
        self.model, self.lambdas, self.cb_kwargs, self.poll_s = model, lambdas, dict(cb_kwargs), poll_s
        self.manager = None
        self.rows = None  # the installed LambdaRowsProcessorList (step counters) of the current manager
        self.generation = 0  # bumped at every (re)start: a request belongs to the manager it was added to
        self.restarts = 0
        self.last_error: str | None = None
        self.restarting = False
        self.model_lock = threading.Lock()  # one user of the model outside the engine at a time
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        gen = copy.deepcopy(model.generation_config)
        self.defaults = {
            "do_sample": bool(gen.do_sample),
            "temperature": gen.temperature,
            "top_k": gen.top_k,
            "top_p": gen.top_p,
        }
        gen.use_cache = False  # the engine keeps its own paged KV cache
        for key, value in _SAMPLING_PLACEHOLDERS.items():
            setattr(gen, key, value)
        self.gen_config = gen
        self.vocab = int(model.config.get_text_config().vocab_size)

    # ---- life cycle ----

    def _new_manager(self, timeout: float = 300.0):
        # No prefix sharing: two requests with the same prompt at different λ have different KV caches.
        config = cbi.cb_config(
            **self.cb_kwargs, use_async_batching=False, per_request_processors=True, allow_block_sharing=False
        )
        manager = self.model.init_continuous_batching(
            generation_config=self.gen_config, continuous_batching_config=config
        )
        rows = cbi.attach_lambda_rows(manager, self.model, self.lambdas)
        manager.start()
        deadline = time.monotonic() + timeout
        while not cbi.engine_started(manager):
            error = cbi.engine_fatal_error(manager)
            if error is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the continuous-batching engine did not start: {error or 'timed out'}")
            time.sleep(0.01)
        keys = cbi.sampling_processor_keys(manager)
        if not {"temperature", "top_k", "top_p"} <= set(keys):
            raise RuntimeError(f"the engine has no per-request sampling processors (it has {sorted(keys)})")
        self.manager, self.rows = manager, rows
        self.generation += 1
        return manager

    def start(self) -> int:
        """Start the engine and its supervisor; returns the most tokens (prompt + new) one request may hold."""
        manager = self._new_manager()
        self._supervisor = threading.Thread(target=self._supervise, name="dami-engine-supervisor", daemon=True)
        self._supervisor.start()
        return cbi.max_single_request_tokens(manager)

    @property
    def alive(self) -> bool:
        return not self.restarting and _running(self.manager)

    def _supervise(self) -> None:
        """Restart the engine whenever its worker dies (an error inside one step kills transformers' worker)."""
        while not self._stop.wait(self.poll_s):
            manager = self.manager
            if manager is None or _running(manager):
                continue
            if self._stop.is_set():
                return
            self.restarting = True
            self.last_error = str(cbi.engine_fatal_error(manager) or "the worker thread exited")
            log.error("dami serve: the engine's worker died (%s); restarting it", self.last_error)
            try:
                manager.stop(block=True, timeout=10)
            except Exception:  # noqa: BLE001 - the dead manager is dropped whatever it says
                log.exception("dami serve: stopping the dead engine failed")
            while not self._stop.is_set():
                try:
                    self._new_manager()
                    break
                except Exception:  # noqa: BLE001 - retried until it starts; /health reports "restarting"
                    log.exception("dami serve: restarting the engine failed; retrying")
                    time.sleep(1.0)
            self.restarts += 1
            self.restarting = False

    def shutdown(self) -> None:
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10)
        if self.manager is not None and self.manager.is_running():
            self.manager.stop(block=True, timeout=30)

    def load(self) -> tuple[int, int]:
        """(requests running, requests waiting) in the engine."""
        return cbi.engine_load(self.manager) if self.manager is not None else (0, 0)

    # ---- requests ----

    def sampling(self, temperature: float | None, top_p: float | None) -> dict:
        """The engine's per-request sampling kwargs: a request's values, else the model's generation config
        (greedy when it does not sample, or at temperature 0)."""
        d = self.defaults
        if temperature is None:
            temperature = (d["temperature"] if d["temperature"] is not None else 1.0) if d["do_sample"] else 0.0
        if temperature == 0.0:
            return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
        top_k = d["top_k"] if d["do_sample"] and d["top_k"] else self.vocab
        if top_p is None:
            top_p = d["top_p"] if d["do_sample"] and d["top_p"] is not None else 1.0
        return {"temperature": float(temperature), "top_k": int(top_k), "top_p": float(top_p)}

    async def generate(
        self, request_id: str, prompt_ids: list[int], max_new_tokens: int, sampling: dict, served: ServedLambda
    ):
        """Async iterator over the engine's outputs for one request (`GenerationOutput`, tokens cumulative), the
        last one finished. Raises EngineDown when the worker is (or goes) down, RequestFailed when the engine
        fails this request only. Cancels the request if the consumer stops early."""
        if not self.alive:
            raise EngineDown(
                "the generation engine is restarting" if self.restarting else "the generation engine is not running"
            )
        manager, generation = self.manager, self.generation
        outputs: asyncio.Queue = asyncio.Queue()
        self.lambdas.register(request_id, served)
        finished = False
        try:
            manager.register_result_handler(request_id, outputs.put_nowait)
            manager.add_request(
                prompt_ids, request_id=request_id, max_new_tokens=max_new_tokens, streaming=True, **sampling
            )
            while True:
                try:
                    out = await asyncio.wait_for(outputs.get(), timeout=self.poll_s * 5)
                except asyncio.TimeoutError:
                    if self.generation != generation or not self.alive:
                        raise EngineDown("the generation engine's worker died; it is restarting") from None
                    continue
                if out.error is not None:
                    finished = True
                    if await self._died(generation):
                        raise EngineDown(f"the generation engine's worker died ({out.error}); it is restarting")
                    raise RequestFailed(out.error)
                finished = out.is_finished()
                yield out
                if finished:
                    return
        finally:
            self.lambdas.release(request_id)
            if not finished:
                manager.cancel_request(request_id)
                cbi.forget_result_handler(manager, request_id)

    async def _died(self, generation: int, wait_s: float = 1.0) -> bool:
        """Whether the manager of `generation` died (waits briefly: transformers fails the requests first)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.generation != generation or not self.alive:
                return True
            await asyncio.sleep(0.02)
        return False

    @contextmanager
    def model_session(self, lam=None):
        """The model to oneself: the engine paused (its requests stay in flight), λ set to `lam` if given and
        restored after. One session at a time. Needs the engine's pause API (transformers 5.24+)."""
        from dami_kernels.pair import lambda_scope

        cbi.require_engine_pause("running the model beside the engine")
        with self.model_lock:
            if not self.alive:
                raise EngineDown("the generation engine is restarting")
            with self.manager.pause(), torch.no_grad():
                if lam is None:
                    yield self.model
                else:
                    with lambda_scope(self.model, lam):
                        yield self.model


def _running(manager) -> bool:
    """Whether a manager's worker thread runs and has recorded no fatal error."""
    return manager is not None and manager.is_running() and cbi.engine_fatal_error(manager) is None


class AutoLambda:
    """λ(q) for `"lam": "auto"`: the server's estimator (DAMI-Conf or DAMI-Pref) on the request's prompt tokens,
    run in a model session (the estimator runs the model at λ = 0 and 1 and restores the engine's λ rows)."""

    def __init__(self, engine: PairEngine, tokenizer, method: str, estimator):
        self.engine, self.tokenizer, self.method, self.estimator = engine, tokenizer, method, estimator
        self.calls = 0

    def __call__(self, prompt_ids: list[int]) -> float:
        """λ for one prompt given as the token ids the engine will run (decoded with special tokens and fed to
        the estimator as raw text, so that it sees the same tokens)."""
        from dami_kernels.estimators import estimate

        text = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        with self.engine.model_session() as model:
            lam = estimate(
                model,
                self.tokenizer,
                [text],
                self.method,
                estimator=self.estimator,
                progress=False,
                chat_template=False,
            )
        self.calls += 1
        return float(lam[0])


def token_logprobs(model, prompt_ids: list[int], generated_ids: list[int], top: int) -> list:
    """[(token id, logprob, [(alternative id, logprob)] * top)] for each generated token: the log-softmax of the
    model's logits (no temperature, no top-p) given the prompt and the tokens before it, in one forward pass.
    Run it in `PairEngine.model_session(lam)`."""
    if not generated_ids:
        return []
    ids = torch.tensor([list(prompt_ids) + list(generated_ids[:-1])], dtype=torch.long, device=model.device)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 :].float()  # [G, V]
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(1, torch.tensor(generated_ids, device=logp.device)[:, None])[:, 0].tolist()
    if top:
        values, indices = logp.topk(top, dim=-1)
        alts = [list(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
    else:
        alts = [[] for _ in generated_ids]
    return [(t, lp, a) for t, lp, a in zip(generated_ids, chosen, alts, strict=True)]
