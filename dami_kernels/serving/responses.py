"""OpenAI response objects for `dami serve`: chat completions and text completions, whole or as stream chunks,
with the request's λ (`lam`, `lam_source`) in every object and logprobs in OpenAI's two layouts.

A token's logprob entry is (token id, logprob, [(alternative id, logprob), ...]): log-probabilities of the model
at the request's λ before temperature and top-p (`scoring.token_logprobs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dami_kernels.serving.lambda_policy import ServedLambda


@dataclass
class Choice:
    """One finished choice: its text (reasoning split off for chat), why it ended, its generated token ids (up
    to a stop string) and, when asked, their logprob entries."""

    index: int
    text: str
    finish_reason: str
    token_ids: list[int] = field(default_factory=list)
    reasoning: str | None = None
    logprobs: list | None = None


def _token(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


def chat_logprobs(tokenizer, entries: list) -> dict:
    """{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]} (chat layout)."""

    def one(token_id, logprob):
        text = _token(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**one(t, lp), "top_logprobs": [one(a, alp) for a, alp in top]} for t, lp, top in entries]}


def completion_logprobs(tokenizer, entries: list, offset: int = 0) -> dict:
    """{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"} (completions layout)."""
    tokens, offsets = [], []
    for token_id, _, _ in entries:
        offsets.append(offset)
        tokens.append(_token(tokenizer, token_id))
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [lp for _, lp, _ in entries],
        "top_logprobs": [{_token(tokenizer, a): alp for a, alp in top} for _, _, top in entries],
        "text_offset": offsets,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _envelope(kind: str, request_id: str, created: int, model: str, served: ServedLambda) -> dict:
    return {
        "id": request_id,
        "object": kind,
        "created": created,
        "model": model,
        "lam": served.lam,
        "lam_source": served.source,
    }


def full_response(
    route: str,
    tokenizer,
    request_id: str,
    created: int,
    model: str,
    served: ServedLambda,
    choices: list[Choice],
    prompt_tokens: int,
) -> dict:
    """The whole (non-streamed) chat.completion or text_completion object."""
    out = []
    for c in choices:
        if route == "chat":
            message = {"role": "assistant", "content": c.text}
            if c.reasoning is not None:
                message["reasoning_content"] = c.reasoning
            logprobs = None if c.logprobs is None else chat_logprobs(tokenizer, c.logprobs)
            out.append({"index": c.index, "message": message, "logprobs": logprobs, "finish_reason": c.finish_reason})
        else:
            logprobs = None if c.logprobs is None else completion_logprobs(tokenizer, c.logprobs)
            out.append({"index": c.index, "text": c.text, "logprobs": logprobs, "finish_reason": c.finish_reason})
    kind = "chat.completion" if route == "chat" else "text_completion"
    body = _envelope(kind, request_id, created, model, served)
    body.update(choices=out, usage=usage(prompt_tokens, sum(len(c.token_ids) for c in choices)))
    return body


def chunk(
    route: str,
    tokenizer,
    request_id: str,
    created: int,
    model: str,
    served: ServedLambda,
    index: int,
    *,
    text: str = "",
    reasoning: str = "",
    role: bool = False,
    finish_reason: str | None = None,
    logprobs: list | None = None,
    offset: int = 0,
) -> dict:
    """One stream chunk of one choice (chat.completion.chunk or text_completion)."""
    if route == "chat":
        delta = {"role": "assistant"} if role else {}
        if reasoning:
            delta["reasoning_content"] = reasoning
        if text or (role and not reasoning):
            delta["content"] = text
        lp = None if logprobs is None else chat_logprobs(tokenizer, logprobs)
        choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}
        kind = "chat.completion.chunk"
    else:
        lp = None if logprobs is None else completion_logprobs(tokenizer, logprobs, offset)
        choice = {"index": index, "text": text, "logprobs": lp, "finish_reason": finish_reason}
        kind = "text_completion"
    body = _envelope(kind, request_id, created, model, served)
    body["choices"] = [choice]
    return body


def usage_chunk(
    route: str,
    request_id: str,
    created: int,
    model: str,
    served: ServedLambda,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict:
    """The last chunk when stream_options.include_usage is set: no choices, the usage."""
    kind = "chat.completion.chunk" if route == "chat" else "text_completion"
    body = _envelope(kind, request_id, created, model, served)
    body.update(choices=[], usage=usage(prompt_tokens, completion_tokens))
    return body
