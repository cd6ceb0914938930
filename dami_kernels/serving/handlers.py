"""`/v1/chat/completions` and `/v1/completions` with a λ per request: transformers' handlers plus λ.

`LambdaHandlerMixin` adds to a transformers handler exactly what the pair needs:
1. `handle_request`: read the request's λ (`LamPolicy.parse`: `lam`, `reasoning_effort`, else the server
   default; HTTP 400 naming the field when bad) before transformers validates the rest of the body;
2. `_non_streaming` / `_streaming` (called by transformers with the prompt's token ids): check the prompt
   length (HTTP 400), run the estimator for "auto", register the request's λ for the engine's λ rows, and
   report it: field `lam` (and `lam_source`) in the JSON response and in every streamed chunk, headers
   `x-dami-lam` and `x-dami-lam-source`.
transformers' `_streaming` builds its StreamingResponse synchronously; here it returns a coroutine (so that
"auto" can be estimated off the event loop before the response headers go out), which `handle_request`
awaits.
"""
from __future__ import annotations

import asyncio
import inspect
import json

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from transformers.cli.serving.chat_completion import ChatCompletionHandler
from transformers.cli.serving.completion import CompletionHandler

from dami_kernels.serving.lam_policy import LamChoice, LamPolicy, RequestError
from dami_kernels.serving.rows import RequestLambdas, ServedLambda
from dami_kernels.serving.versions import chat_reads_max_completion_tokens

LAM_HEADER = "x-dami-lam"
LAM_SOURCE_HEADER = "x-dami-lam-source"


def bad_request(field_name: str, message: str) -> HTTPException:
    return HTTPException(status_code=400, detail=f"{field_name}: {message}")


class LambdaHandlerMixin:
    """λ per request for a transformers chat/completion handler (see the module docstring).

    prompt_field: the body field that holds the prompt (named in the over-long prompt error)."""

    prompt_field = "prompt"

    def setup_lambda(self, policy: LamPolicy, lambdas: RequestLambdas, context_len: int, auto=None) -> None:
        """policy: the server's λ rules; lambdas: the engine's registry; context_len: prompt + new tokens
        allowed per request; auto: a callable prompt_ids -> λ (`engine.AutoLambda`) or None."""
        self.policy, self.lambdas, self.context_len, self.auto = policy, lambdas, int(context_len), auto
        self._choices: dict[str, LamChoice] = {}

    async def handle_request(self, body: dict, request_id: str):
        if not isinstance(body, dict):
            raise bad_request("body", "must be a JSON object")
        try:
            choice = self.policy.parse(body)
        except RequestError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        body = self.adapt_body(body)
        served_id = self.model_manager.force_model
        if body.get("model") not in (None, served_id):
            raise bad_request("model", f"this server serves {served_id!r} only, got {body['model']!r}")
        if request_id in self._choices or self.lambdas.lookup(request_id) is not None:
            raise bad_request("x-request-id", f"request id {request_id!r} is already in flight")
        self._choices[request_id] = choice
        try:
            response = await super().handle_request(body, request_id)
            if inspect.isawaitable(response):  # the streaming path (see `_streaming`)
                response = await response
            return response
        finally:
            self._choices.pop(request_id, None)

    def adapt_body(self, body: dict) -> dict:
        """The body as this transformers release's handler reads it (λ fields already removed)."""
        return body

    async def _begin(self, request_id: str, inputs: dict, gen_config) -> ServedLambda:
        """Check the prompt length, resolve and register the request's λ; returns it."""
        choice = self._choices[request_id]
        prompt_ids = list(inputs["input_ids"])
        n, context = len(prompt_ids), self.context_len
        if n >= context:
            raise bad_request(self.prompt_field, f"the prompt is {n} tokens; this server allows prompts of at "
                              f"most {context - 1} tokens (context {context})")
        if choice.max_tokens_field is not None:
            if n + gen_config.max_new_tokens > context:
                raise bad_request(choice.max_tokens_field, f"{gen_config.max_new_tokens} new tokens after a "
                                  f"prompt of {n} exceed the context of {context} tokens")
        else:
            gen_config.max_new_tokens = min(int(gen_config.max_new_tokens or context), context - n)
        lam = choice.lam
        if lam is None:
            lam = await asyncio.get_running_loop().run_in_executor(None, self.auto, prompt_ids)
        served = ServedLambda(lam, choice.source)
        try:
            self.lambdas.register(request_id, served)
        except ValueError as err:
            raise bad_request("x-request-id", str(err)) from None
        return served

    async def _non_streaming(self, request_id, model, processor, model_id, inputs, gen_config, *args, **kwargs):
        served = await self._begin(request_id, inputs, gen_config)
        try:
            response = await super()._non_streaming(request_id, model, processor, model_id, inputs, gen_config,
                                                    *args, **kwargs)
        finally:
            self.lambdas.release(request_id)
        data = json.loads(response.body)
        data.update(lam=served.lam, lam_source=served.source)
        return JSONResponse(data, status_code=response.status_code, headers=lambda_headers(served))

    def _streaming(self, request_id, model, processor, model_id, inputs, gen_config, *args, **kwargs):
        return self._streaming_with_lambda(request_id, model, processor, model_id, inputs, gen_config,
                                           *args, **kwargs)

    async def _streaming_with_lambda(self, request_id, model, processor, model_id, inputs, gen_config,
                                     *args, **kwargs):
        served = await self._begin(request_id, inputs, gen_config)
        try:
            response = super()._streaming(request_id, model, processor, model_id, inputs, gen_config,
                                          *args, **kwargs)
        except BaseException:
            self.lambdas.release(request_id)
            raise
        response.body_iterator = self._release_after(response.body_iterator, request_id)
        response.headers.update(lambda_headers(served))
        return response

    async def _release_after(self, chunks, request_id: str):
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self.lambdas.release(request_id)

    def chunk_to_sse(self, chunk) -> str:
        """transformers' SSE line, with the request's `lam` and `lam_source` in every chunk."""
        if isinstance(chunk, str):
            return super().chunk_to_sse(chunk)
        data = chunk.model_dump(mode="json", exclude_none=True)
        served = self.lambdas.lookup(data.get("id"))
        if served is not None:
            data.update(lam=served.lam, lam_source=served.source)
        return f"data: {json.dumps(data)}\n\n"


def lambda_headers(served: ServedLambda) -> dict[str, str]:
    return {LAM_HEADER: repr(served.lam), LAM_SOURCE_HEADER: served.source}


class PairChatCompletionHandler(LambdaHandlerMixin, ChatCompletionHandler):
    """`/v1/chat/completions` (the prompt is the chat template applied to `messages`)."""

    prompt_field = "messages"

    def adapt_body(self, body: dict) -> dict:
        """`max_completion_tokens` (which wins over `max_tokens`, as in the OpenAI API) passed on as `max_tokens`
        to a transformers chat handler that refuses it (5.17)."""
        if "max_completion_tokens" in body and not chat_reads_max_completion_tokens():
            value = body.pop("max_completion_tokens")
            if value is not None:
                body["max_tokens"] = value
        return body


class PairCompletionHandler(LambdaHandlerMixin, CompletionHandler):
    """`/v1/completions` (the prompt is the raw text, tokenized with the tokenizer's special tokens)."""

    prompt_field = "prompt"


class NotServedHandler:
    """A route of transformers' server that `dami serve` does not offer (no per-request λ there)."""

    def __init__(self, route: str):
        self.route = route

    async def handle_request(self, *args, **kwargs):
        raise HTTPException(status_code=404, detail=f"{self.route} is not served by dami serve; use "
                            "/v1/chat/completions or /v1/completions")
