"""`/v1/chat/completions` and `/v1/completions`: a validated request becomes `n` engine requests at the request's
λ; their tokens become OpenAI responses (whole, or streamed as server-sent events).

Order of work for one request: validate the body (`protocol.parse_request`), build the prompt's token ids (chat
template, or the raw prompt), check its length, resolve λ ("auto": the estimator, in a model session), run the
choices in the engine (stop strings cancel a choice), score logprobs when asked (one forward pass per choice in a
model session: streamed requests with logprobs are sent once complete), answer. Errors before the first byte are
HTTP errors; an error after a stream started is sent as a last `data: {"error": ...}` event.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from dami_kernels.generation import eos_ids
from dami_kernels.hf.prompts import encode_prompts, encode_text
from dami_kernels.serving import responses as R
from dami_kernels.serving.cb_internals import has_engine_pause
from dami_kernels.serving.engine import EngineDown, RequestFailed, token_logprobs
from dami_kernels.serving.lambda_policy import ServedLambda
from dami_kernels.serving.protocol import APIError, GenerationParams, invalid, parse_request, read_json, request_id_of
from dami_kernels.serving.text import THINK_OPEN, ReasoningSplit, TextStream, split_reasoning

LAM_HEADER, LAM_SOURCE_HEADER = "x-dami-lam", "x-dami-lam-source"


class Handlers:
    """The two generation routes of one server (see the module docstring)."""

    def __init__(self, model, tokenizer, options, served):
        self.model, self.tokenizer, self.options, self.served = model, tokenizer, options, served
        self.engine = served.engine
        self.eos = eos_ids(model, tokenizer)
        self.vocab = int(model.config.get_text_config().vocab_size)

    # ---- request -> prompt ----

    def prompt_ids(self, params: GenerationParams) -> tuple[list[int], str]:
        """(token ids, field to name in errors)."""
        tok = self.tokenizer
        if params.route == "chat":
            if not getattr(tok, "chat_template", None):
                raise invalid("messages", "the model's tokenizer has no chat template; use /v1/completions")
            try:
                text = tok.apply_chat_template(params.messages, tokenize=False, add_generation_prompt=True)
            except Exception as err:  # noqa: BLE001 - a template's own refusal (e.g. no system role) is the client's
                raise invalid("messages", f"the chat template refused them: {' '.join(str(err).split())}") from None
            ids, where = encode_text(tok, text), "messages"
        elif isinstance(params.prompt, str):  # the raw text, as dk.generate(..., chat_template=False) encodes it
            ids, where = encode_prompts(tok, [params.prompt], chat_template=False)[0], "prompt"
        else:
            bad = [t for t in params.prompt if not 0 <= t < self.vocab]
            if bad:
                raise invalid("prompt", f"token id {bad[0]} is outside the vocabulary [0, {self.vocab})")
            ids, where = list(params.prompt), "prompt"
        if not ids:
            raise invalid(where, "encodes to no tokens")
        return ids, where

    def new_tokens(self, params: GenerationParams, n_prompt: int, where: str) -> int:
        context = self.served.context_len
        if n_prompt >= context:
            raise invalid(
                where,
                f"the prompt is {n_prompt} tokens; this server allows prompts of at most "
                f"{context - 1} tokens (context {context})",
            )
        if params.max_tokens is not None:
            if n_prompt + params.max_tokens > context:
                raise invalid(
                    params.lam.max_tokens_field,
                    f"{params.max_tokens} new tokens after a prompt of "
                    f"{n_prompt} exceed the context of {context} tokens",
                )
            return params.max_tokens
        default = self.model.generation_config.max_new_tokens
        return min(int(default or context), context - n_prompt)

    # ---- the route ----

    async def handle(self, route: str, request):
        from fastapi.responses import JSONResponse, StreamingResponse

        t_request = time.perf_counter()
        request_id = request_id_of(request)
        body = await read_json(request)
        model_name = self.options.model_id
        if isinstance(body, dict) and body.get("model") not in (None, model_name):
            raise invalid(
                "model",
                f"this server serves {model_name!r} only, got {str(body['model'])[:60]!r}",
                code="model_not_found",
            )
        params = parse_request(body, route, self.served.policy, self.options.max_n)
        ids, where = self.prompt_ids(params)
        max_new = self.new_tokens(params, len(ids), where)
        sampling = self.engine.sampling(params.temperature, params.top_p)
        if params.seed is not None and sampling["top_k"] != 1:
            raise invalid(
                "seed",
                "is not supported when sampling: requests in one engine batch share its random "
                "numbers (give temperature 0, or leave seed out)",
            )
        if params.logprobs and not has_engine_pause():
            raise invalid("logprobs", "needs a transformers release whose engine can pause (5.24+)")
        if not self.engine.alive:
            raise unavailable(EngineDown("the generation engine is restarting"))
        if request_id in self.served.inflight:
            raise invalid("x-request-id", f"request id {request_id!r} is already in flight")
        self.served.inflight.add(request_id)
        try:
            served = await self.resolve_lambda(params, ids)
            self.served.metrics.prompt_tokens.inc(len(ids))
            self.served.metrics.lam.observe(served.lam)
            headers = {LAM_HEADER: repr(served.lam), LAM_SOURCE_HEADER: served.source}
            ctx = _Ctx(
                request_id,
                int(time.time()),
                model_name,
                served,
                ids,
                max_new,
                sampling,
                params,
                t_request,
                think_opened=route == "chat" and self.think_opened(ids),
            )
            if params.stream:
                events = self.stream(ctx)
                first = await anext(events)  # an error before the first event is answered with its HTTP status
                return StreamingResponse(
                    _chain(first, events, self.served.inflight, request_id),
                    media_type="text/event-stream",
                    headers=headers,
                )
            choices = await self.run_choices(ctx)
            body = R.full_response(
                route, self.tokenizer, request_id, ctx.created, model_name, served, choices, len(ids)
            )
            self.served.inflight.discard(request_id)
            return JSONResponse(body, headers=headers)
        except BaseException:
            self.served.inflight.discard(request_id)
            raise

    async def resolve_lambda(self, params: GenerationParams, ids: list[int]) -> ServedLambda:
        choice = params.lam
        if choice.lam is not None:
            return ServedLambda(choice.lam, choice.source)
        try:
            lam = await asyncio.get_running_loop().run_in_executor(None, self.served.auto, ids)
        except EngineDown as err:
            raise unavailable(err) from None
        return ServedLambda(lam, choice.source)

    # ---- choices ----

    async def run_choice(self, ctx: _Ctx, index: int, on_text=None) -> R.Choice:
        """Run one choice to its end; on_text(index, delta, token_count): called as safe text arrives."""
        text = TextStream(self.tokenizer, ctx.params.stop)
        ids, times = [], []
        try:
            async for out in self.engine.generate(
                f"{ctx.request_id}-{index}", ctx.prompt_ids, ctx.max_new, ctx.sampling, ctx.served
            ):
                new = out.generated_tokens[len(ids) :]
                if not new:
                    continue
                now = time.perf_counter()
                times.extend([now] * len(new))
                ids = list(out.generated_tokens)
                delta = text.update(ids)
                if on_text is not None and delta:
                    await on_text(index, delta, text.tokens)
                if text.stopped:
                    break
        except EngineDown as err:
            raise unavailable(err) from None
        except RequestFailed as err:
            raise APIError(500, f"the engine failed this request: {err}") from None
        tail = text.finish()
        if on_text is not None and tail:
            await on_text(index, tail, text.tokens)
        kept = ids[: text.tokens] if text.stopped else ids
        finish = "stop" if text.stopped or (kept and kept[-1] in self.eos) else "length"
        self.served.metrics.observe_choice(ctx.t_request, times[: len(kept)])
        choice = R.Choice(index, text.text, finish, kept)
        if ctx.params.route == "chat":
            choice.reasoning, choice.text = split_reasoning(text.text, ctx.think_opened)
        return choice

    def think_opened(self, prompt_ids: list[int]) -> bool:
        """Whether the chat template opened a `<think>` block at the end of the prompt (Qwen3 Thinking's)."""
        tail = self.tokenizer.decode(prompt_ids[-4:], skip_special_tokens=False).rstrip()
        return tail.endswith(THINK_OPEN)

    async def run_choices(self, ctx: _Ctx, on_text=None) -> list[R.Choice]:
        tasks = [asyncio.ensure_future(self.run_choice(ctx, i, on_text)) for i in range(ctx.params.n)]
        try:
            choices = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        if ctx.params.logprobs:
            await self.add_logprobs(ctx, choices)
        return list(choices)

    async def add_logprobs(self, ctx: _Ctx, choices: list[R.Choice]) -> None:
        def score():
            with self.engine.model_session(ctx.served.lam) as model:
                return [token_logprobs(model, ctx.prompt_ids, c.token_ids, ctx.params.top_logprobs) for c in choices]

        try:
            scored = await asyncio.get_running_loop().run_in_executor(None, score)
        except EngineDown as err:
            raise unavailable(err) from None
        for choice, entries in zip(choices, scored, strict=True):
            choice.logprobs = entries

    # ---- streaming ----

    async def stream(self, ctx: _Ctx):
        """Server-sent events of the request: role chunk, text chunks per choice, finish chunks, usage, [DONE]."""
        route, tok = ctx.params.route, self.tokenizer

        def make(index, **kw):
            return R.chunk(route, tok, ctx.request_id, ctx.created, ctx.model, ctx.served, index, **kw)

        if ctx.params.logprobs:  # scored once complete, then sent token by token
            choices = await self.run_choices(ctx)
            for c in choices:
                if route == "chat":
                    yield _sse(make(c.index, role=True))
                offset = 0
                for k, entry in enumerate(c.logprobs):
                    piece = tok.decode(c.token_ids[: k + 1], skip_special_tokens=True)[offset:]
                    yield _sse(make(c.index, text=piece, logprobs=[entry], offset=offset))
                    offset += len(piece)
                yield _sse(make(c.index, finish_reason=c.finish_reason))
        else:
            queue: asyncio.Queue = asyncio.Queue()
            splitters = [ReasoningSplit(ctx.think_opened) for _ in range(ctx.params.n)]

            async def on_text(index, delta, _tokens):
                if route == "chat":
                    reasoning, content = splitters[index].feed(delta)
                    if reasoning or content:
                        await queue.put(make(index, text=content, reasoning=reasoning))
                else:
                    await queue.put(make(index, text=delta))

            async def produce():
                try:
                    done = await self.run_choices(ctx, on_text)
                    await queue.put(done)
                except BaseException as err:  # noqa: BLE001 - handed to the consumer
                    await queue.put(err)

            if route == "chat":
                for i in range(ctx.params.n):
                    yield _sse(make(i, role=True))
            task = asyncio.ensure_future(produce())
            try:
                while True:
                    item = await queue.get()
                    if isinstance(item, BaseException):
                        raise item
                    if isinstance(item, list):
                        choices = item
                        break
                    yield _sse(item)
                for c in choices:
                    if route == "chat":
                        reasoning, content = splitters[c.index].feed("", final=True)
                        if reasoning or content:
                            yield _sse(make(c.index, text=content, reasoning=reasoning))
                    yield _sse(make(c.index, finish_reason=c.finish_reason))
            finally:
                task.cancel()
        if ctx.params.include_usage:
            yield _sse(
                R.usage_chunk(
                    route,
                    ctx.request_id,
                    ctx.created,
                    ctx.model,
                    ctx.served,
                    len(ctx.prompt_ids),
                    sum(len(c.token_ids) for c in choices),
                )
            )
        yield "data: [DONE]\n\n"


@dataclass
class _Ctx:
    """One request being served. created: its Unix time; model: the served model name; t_request: when it
    arrived (perf_counter); think_opened: a chat prompt ends inside an opened `<think>` block."""

    request_id: str
    created: int
    model: str
    served: ServedLambda
    prompt_ids: list[int]
    max_new: int
    sampling: dict
    params: GenerationParams
    t_request: float
    think_opened: bool = False


def unavailable(err: Exception) -> APIError:
    return APIError(503, str(err), code="engine_restarting", headers={"Retry-After": str(EngineDown.retry_after)})


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _chain(first: str, events, inflight: set, request_id: str):
    """The first event, then the rest; an error after the stream started becomes a last error event."""
    try:
        yield first
        async for event in events:
            yield event
    except APIError as err:
        yield _sse(err.body())
    except Exception as err:  # noqa: BLE001 - the status line is sent: the error goes into the stream
        yield _sse(APIError(500, f"internal server error ({type(err).__name__})").body())
    finally:
        inflight.discard(request_id)
        await events.aclose()
