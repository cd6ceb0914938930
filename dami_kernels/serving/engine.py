"""The generation side of `dami serve`: transformers' continuous-batching manager with the λ rows attached,
started once for the pair, and the λ(q) estimator that answers `"lam": "auto"` while the engine is paused.
"""
from __future__ import annotations

import copy
import threading
import time
from contextlib import contextmanager

from transformers.cli.serving.utils import CBGenerateManager, GenerationState

from dami_kernels.serving.rows import RequestLambdas, attach_lambda_rows
from dami_kernels.serving.versions import max_single_request_tokens


class PairCBGenerateManager(CBGenerateManager):
    """transformers' CB generate manager whose engine runs every step at its requests' λ
    (`attach_lambda_rows`). Started once, by `start`, with the model's own generation config."""

    def __init__(self, cb_config, lambdas: RequestLambdas):
        super().__init__(cb_config=cb_config)
        self.lambdas = lambdas
        self.rows = None  # the installed LambdaRowsProcessorList (step counters)

    def init_cb(self, model, gen_config) -> None:
        """Create, extend and start the engine once; later calls (one per request) do nothing."""
        if self._cb is not None:
            return
        cb = model.init_continuous_batching(generation_config=gen_config, continuous_batching_config=self._cb_config)
        self.rows = attach_lambda_rows(cb, model, self.lambdas)
        cb.start()
        self._cb = cb

    def start(self, model, timeout: float = 300.0) -> int:
        """Start the engine with the model's generation config (sampling settings are shared by all requests
        in transformers' engine; per-request: max tokens and EOS). Waits until its KV cache exists and
        returns the most tokens (prompt + new) one request can hold in it: a longer request could never be
        scheduled, and the engine would stop for every request."""
        config = copy.deepcopy(model.generation_config)
        config.use_cache = False  # the engine keeps its own paged KV cache
        self.init_cb(model, config)
        deadline = time.monotonic() + timeout
        while self._cb.batch_processor is None:
            error = self._cb.background_thread_status.fatal_error
            if error is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the continuous-batching engine did not start: {error or 'timed out'}")
            time.sleep(0.01)
        return max_single_request_tokens(self._cb.batch_processor.cache)

    @contextmanager
    def paused(self):
        """The engine's generation loop paused (its requests stay in flight): the caller may use the model."""
        if self._cb is None:
            yield
            return
        with self._cb.pause():
            yield


class PairGenerationState(GenerationState):
    """One continuous-batching manager for the one pair this server holds (never a sequential fallback:
    only the engine carries per-request λ)."""

    def __init__(self, cb_config, lambdas: RequestLambdas):
        super().__init__(continuous_batching=True, cb_config=cb_config)
        self.manager = PairCBGenerateManager(cb_config, lambdas)

    def use_continuous_batching(self, model, modality) -> bool:
        return True

    def get_manager(self, model_id: str, use_cb: bool = False) -> PairCBGenerateManager:
        return self.manager

    def shutdown(self) -> None:
        self.manager.stop()

    def is_cb_alive(self) -> bool:
        return self.manager.is_alive()


class AutoLambda:
    """λ(q) for `"lam": "auto"`: the server's estimator (DAMI-Conf or DAMI-Pref) on the request's prompt
    tokens, run while the engine is paused (the estimator runs the same model at λ = 0 and 1 and restores
    the engine's λ rows after). One estimate at a time."""

    def __init__(self, model, tokenizer, method: str, estimator, manager: PairCBGenerateManager):
        self.model, self.tokenizer, self.method, self.estimator = model, tokenizer, method, estimator
        self.manager = manager
        self._lock = threading.Lock()
        self.calls = 0

    def __call__(self, prompt_ids: list[int]) -> float:
        """λ for one prompt given as the token ids the engine will run (decoded with special tokens and fed
        to the estimator as raw text, so that it sees the same tokens)."""
        from dami_kernels.estimators import estimate

        text = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        with self._lock, self.manager.paused():
            lam = estimate(self.model, self.tokenizer, [text], self.method, estimator=self.estimator,
                           progress=False, chat_template=False)
        self.calls += 1
        return float(lam[0])
