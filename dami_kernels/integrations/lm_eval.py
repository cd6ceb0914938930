"""The `dami` model for EleutherAI's lm-evaluation-harness: lm-eval's own Hugging Face model class (HFLM)
running an Instruct/Thinking pair, every request at its own λ.

    dami lm-eval --model dami --model_args instruct=DIR,thinking=DIR,lam=conf --tasks ... --apply_chat_template

model_args: ``instruct=DIR,thinking=DIR`` and ``lam=`` a number (one λ for every request), ``conf`` or
``pref`` (a λ(q) estimator picks λ per request; ``estimator_dir=DIR`` names one written by
``dami estimate train``, default: the shipped testbed estimators). Also ``allow_extrapolation=true``
(a fixed λ outside [0, 1]), ``allow_pickle=true``, ``check_finite=false``, ``kernel_backend`` (auto, triton
or torch), ``threads``, ``estimator_batch_size``, and HFLM's own arguments (``dtype``, ``device``,
``batch_size``, ``max_length``, ``think_end_token``, ...). A missing checkpoint directory or a λ outside
[0, 1] is refused (ValueError / FileNotFoundError naming the model_arg) before anything loads.

How λ reaches each row. The estimator runs once per `generate_until` / `loglikelihood` call on every
request's context, the text lm-eval feeds the model (chat template included), through the code path of
`dami eval --estimator` (`load_estimator` + `estimate`). Then HFLM batches the requests as usual, and
requests with different λ share a batch:
- generate_until: HFLM encodes a batch's contexts with `tok_batch_encode`, which records their λ;
  `_model_generate` runs `model.generate` under `lambda_scope` with one λ per row;
- loglikelihood: HFLM's `_model_call` receives token rows only (right-padded with 0); each row is matched
  to the request whose tokens it holds (keys: the request's row without trailing zeros).
Perplexity tasks (`loglikelihood_rolling`) score documents, not queries: they need a fixed λ.

Importing this module registers the model ``dami`` and the filter ``dami_answer`` with lm-eval (the
package also declares them as lm-eval plugin entry points, which lm-eval releases after 0.4.13 read).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from lm_eval.api.filter import Filter
from lm_eval.api.registry import register_filter, register_model
from lm_eval.models.huggingface import HFLM

from dami_kernels.estimators import estimate
from dami_kernels.estimators.store import load_estimator
from dami_kernels.evaluation.answers import extract_answer, normalize_answer
from dami_kernels.hf.checkpoint import open_checkpoint
from dami_kernels.pair import generation_expand_size, lambda_scope, load_pair, set_lambda
from dami_kernels.testbed.threads import configure_threads, is_testbed_pair
from dami_kernels.validation import is_finite, is_number, outside_unit_interval, positive_int

ESTIMATED = ("conf", "pref")


def lambda_spec(lam) -> float | str:
    """The ``lam`` model_arg: a finite number (lm-eval passes "0.5" as 0.5), or "conf" / "pref"."""
    if isinstance(lam, str):
        text = lam.strip().lower()
        if text in ESTIMATED:
            return text
        try:
            lam = float(text)
        except ValueError:
            raise ValueError(f"lam must be a number, 'conf' or 'pref', got {lam!r}") from None
    if not is_number(lam) or not is_finite(lam):
        raise ValueError(f"lam must be a finite number, 'conf' or 'pref', got {lam!r}")
    return float(lam)


def _unpadded(row: list[int]) -> tuple[int, ...]:
    """A token row without its trailing zeros (HFLM right-pads loglikelihood rows with 0)."""
    end = len(row)
    while end and row[end - 1] == 0:
        end -= 1
    return tuple(row[:end])


@register_model("dami")
class DamiLM(HFLM):
    """lm-eval's HFLM on a λ-interpolated Instruct/Thinking pair (see the module doc for model_args).

    Constructing it sets torch's intra-op threads for the whole process (`testbed.threads.configure_threads`:
    the ``threads`` model_arg, else $DAMI_THREADS, else one thread on the testbed pair) and loads the pair,
    which installs the PEFT registration hook (see `load_pair`).
    """

    def __init__(
        self,
        instruct=None,
        thinking=None,
        lam=0.0,
        estimator_dir=None,
        *,
        allow_extrapolation=False,
        allow_pickle=False,
        check_finite=True,
        kernel_backend=None,
        threads=None,
        estimator_batch_size=32,
        device=None,
        **kwargs,
    ):
        if not instruct or not thinking:
            raise ValueError("the dami model needs model_args instruct=DIR,thinking=DIR")
        if "pretrained" in kwargs:
            raise ValueError("the dami model takes instruct=DIR,thinking=DIR, not pretrained=")
        self.lam_spec = lambda_spec(lam)
        if self.lam_spec not in ESTIMATED and not allow_extrapolation and outside_unit_interval(self.lam_spec):
            raise ValueError(
                f"model_args lam={lam} lies outside [0, 1]; add allow_extrapolation=true to --model_args to accept it"
            )
        # Both checkpoints opened before HFLM (which would take a missing directory for a Hub name).
        for side, directory in (("instruct", instruct), ("thinking", thinking)):
            if not Path(directory).exists():
                raise FileNotFoundError(f"model_args {side}={directory}: no such checkpoint directory")
            open_checkpoint(directory, allow_pickle=bool(allow_pickle))
        if estimator_dir is not None and self.lam_spec not in ESTIMATED:
            raise ValueError("estimator_dir= goes with lam=conf or lam=pref")
        positive_int(estimator_batch_size, "estimator_batch_size")
        self.instruct_dir, self.thinking_dir = str(instruct), str(thinking)
        self._pair_options = {
            "allow_extrapolation": bool(allow_extrapolation),
            "allow_pickle": bool(allow_pickle),
            "check_finite": bool(check_finite),
            "backend": kernel_backend,
        }
        configure_threads(threads, testbed=is_testbed_pair(self.instruct_dir, self.thinking_dir))
        self.estimator = load_estimator(self.lam_spec, estimator_dir) if self.lam_spec in ESTIMATED else None
        self.estimator_batch_size = estimator_batch_size
        self.request_lambdas: dict[str, float] = {}  # context -> λ of the requests of the latest call
        self._context_lams: dict[str, float] | None = None  # set while a generate/loglikelihood call runs
        self._batch_lams: list[float] | None = None
        self._row_lams: dict[tuple[int, ...], float] | None = None
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # An absolute path: HFLM asks the Hub for a model's revision, and a path is never a Hub name.
        super().__init__(pretrained=str(Path(self.instruct_dir).resolve()), backend="causal", device=device, **kwargs)
        # lm-eval sets each task's generation length (max_gen_toks, as max_length); a max_new_tokens saved in
        # the checkpoint's generation config (the testbed pair has 64) would override it.
        self.model.generation_config.max_new_tokens = None
        if self.estimator is None:
            set_lambda(self.model, self.lam_spec)

    # --- loading: the pair instead of AutoModelForCausalLM -------------------------------------------
    def _create_model(
        self,
        pretrained,
        revision="main",
        dtype="auto",
        trust_remote_code=False,
        parallelize=False,
        gpus=None,
        max_memory_per_gpu=None,
        max_cpu_memory=None,
        offload_folder="./offload",
        tp_plan=None,
        peft=None,
        delta=None,
        autogptq=False,
        gptqmodel=False,
        gguf_file=None,
        quantization_config=None,
        subfolder="",
        **kwargs,
    ) -> None:
        unsupported = [
            name
            for name, value in (
                ("parallelize", parallelize),
                ("tp_plan", tp_plan),
                ("peft", peft),
                ("delta", delta),
                ("autogptq", autogptq),
                ("gptqmodel", gptqmodel),
                ("gguf_file", gguf_file),
                ("quantization_config", quantization_config),
                ("max_memory_per_gpu", max_memory_per_gpu),
                ("max_cpu_memory", max_cpu_memory),
            )
            if value
        ] + sorted(kwargs)
        if unsupported:
            raise ValueError(f"the dami model does not take model_args {unsupported}")
        self._model = load_pair(
            self.instruct_dir, self.thinking_dir, dtype=dtype, device=self.device, **self._pair_options
        )

    # --- λ per request ------------------------------------------------------------------------------
    @contextmanager
    def _lambdas_for(self, contexts: list[str]):
        """While a call runs: λ of every distinct context, from the estimator (nothing for a fixed λ)."""
        unique = list(dict.fromkeys(contexts))
        if self.estimator is None or not unique:
            yield
            return
        if any(not c for c in unique):
            raise ValueError("a request has an empty context, from which λ cannot be estimated; use a fixed lam=")
        lams = estimate(
            self.model,
            self.tokenizer,
            unique,
            self.lam_spec,
            estimator=self.estimator,
            batch_size=self.estimator_batch_size,
            chat_template=False,
            progress=self.rank == 0,
        )
        self._context_lams = dict(zip(unique, lams.tolist(), strict=True))
        self.request_lambdas = dict(self._context_lams)
        try:
            yield
        finally:
            self._context_lams = self._batch_lams = self._row_lams = None

    def _lams_of(self, contexts) -> list[float]:
        try:
            return [self._context_lams[c] for c in contexts]
        except KeyError:
            raise RuntimeError("a batch holds a context that was not among the call's requests") from None

    def generate_until(self, requests, disable_tqdm: bool = False):
        with self._lambdas_for([req.args[0] for req in requests]):
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def tok_batch_encode(self, strings, *args, **kwargs):
        if self._context_lams is not None:
            self._batch_lams = self._lams_of(strings)
        return super().tok_batch_encode(strings, *args, **kwargs)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        if self.estimator is None:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        lams, self._batch_lams = self._batch_lams, None
        if lams is None or len(lams) != context.shape[0]:
            raise RuntimeError("generate ran on a batch whose λ values were not recorded by tok_batch_encode")
        expand = generation_expand_size(self.model, generation_kwargs)
        with lambda_scope(self.model, torch.tensor(lams, dtype=torch.float32), expand=expand):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        with self._lambdas_for([req.args[0] for req in requests]):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        if self.estimator is not None:
            raise ValueError(
                "loglikelihood_rolling (perplexity tasks) scores documents, which hold no query "
                "to estimate λ from; use a fixed lam=<number>"
            )
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        if self._context_lams is not None:
            rows: dict[tuple[int, ...], float] = {}
            for (context, _), context_enc, continuation_enc in requests:
                # The row HFLM._loglikelihood_tokens feeds the model for this request.
                key = _unpadded((context_enc + continuation_enc)[-(self.max_length + 1) :][:-1])
                lam = self._lams_of([context])[0]
                if rows.setdefault(key, lam) != lam:
                    raise RuntimeError(
                        "two loglikelihood requests with different λ feed the model the same "
                        "tokens; run them with a fixed lam="
                    )
            self._row_lams = rows
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._row_lams = None

    def _model_call(self, inps, attn_mask=None, labels=None):
        if self._row_lams is None:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        try:
            lams = [self._row_lams[_unpadded(row)] for row in inps.tolist()]
        except KeyError:
            raise RuntimeError("a loglikelihood row matches none of the call's requests") from None
        with lambda_scope(self.model, torch.tensor(lams, dtype=torch.float32)):
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _detect_batch_size(self, requests=None, pos: int = 0):
        saved, self._row_lams = self._row_lams, None  # probe rows are dummies: they run at the model's λ
        try:
            return super()._detect_batch_size(requests, pos)
        finally:
            self._row_lams = saved

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info.update({"instruct": self.instruct_dir, "thinking": self.thinking_dir, "lam": self.lam_spec})
        return info


@register_filter("dami_answer")
class DamiAnswerFilter(Filter):
    """Each response -> its final answer as `dami eval` extracts it (`extract_answer`: after ``</think>``, the
    last ``\\boxed{}``, ``####``, "the answer is", else the last number), in canonical form
    (`normalize_answer`), or "" when there is none. `exact_match` on it against a canonical numeric
    reference is `dami eval`'s exact grading (testbed and GSM8K answers)."""

    def apply(self, resps, docs):
        return [[normalize_answer(extract_answer(r)) or "" for r in doc_resps] for doc_resps in resps]
