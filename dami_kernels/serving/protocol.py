"""What `dami serve` accepts: every request body is validated here, before anything reaches the engine, and
every error is an `APIError` in OpenAI's format (`{"error": {"message", "type", "param", "code"}}`).

Implemented: `messages` (text parts; roles system, developer, user, assistant) or `prompt` (one string or one
list of token ids), `n`, `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `stop`, `stream`,
`stream_options.include_usage`, `logprobs` / `top_logprobs`, `seed` (greedy requests only), and λ (`lam`,
`reasoning_effort`: see `lambda_policy`). `user`, `metadata`, `store` and `service_tier` are accepted and have no
effect. Anything else that changes the output (tools, response_format, images, audio, best_of, echo, suffix,
logit_bias, penalties) is refused with 400 naming the field, as is an unknown field.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field

from dami_kernels.serving.lambda_policy import LambdaChoice, LambdaPolicy, RequestError, _short
from dami_kernels.validation import is_int, is_real

MAX_TOP_LOGPROBS = 20
MAX_STOP = 4
COMMON = {
    "model",
    "n",
    "max_tokens",
    "temperature",
    "top_p",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "user",
    "lam",
    "reasoning_effort",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "metadata",
    "store",
    "service_tier",
}
CHAT_FIELDS = COMMON | {
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
}
COMPLETION_FIELDS = COMMON | {"prompt", "echo", "suffix", "best_of"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _asks(value, harmless=()) -> bool:
    """Whether a field's value asks for something (None, empty and the listed harmless values do not)."""
    if value is None or value in harmless:
        return False
    return not (isinstance(value, (list, dict, str)) and len(value) == 0)


# field -> the values that ask for nothing (a field with any other value is refused as not implemented)
NOT_IMPLEMENTED = {
    "tools": (),
    "functions": (),
    "tool_choice": ("none",),
    "function_call": ("none",),
    "parallel_tool_calls": (),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "web_search_options": (),
    "best_of": (1,),
    "echo": (False,),
    "suffix": (),
    "logit_bias": (),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
}


class APIError(Exception):
    """An HTTP error in OpenAI's format. 4xx: the client's mistake (type invalid_request_error by default);
    5xx: a server fault. headers: extra response headers (e.g. Retry-After)."""

    TYPES = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "invalid_request_error",
        500: "server_error",
        503: "service_unavailable",
    }

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = self.TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(param: str, message: str, code: str | None = None) -> APIError:
    """HTTP 400 naming the field: the message starts with "<param>: "."""
    return APIError(400, f"{param}: {message}", param=param, code=code)


@dataclass
class GenerationParams:
    """A validated request. prompt: a string or token ids (completions); messages: normalized chat messages
    [{"role", "content": str}] (chat). top_logprobs: alternatives per token when logprobs is on."""

    route: str
    lam: LambdaChoice
    messages: list[dict] | None = None
    prompt: str | list[int] | None = None
    n: int = 1
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    seed: int | None = None


def _number(body: dict, key: str, lo: float, hi: float, lo_open: bool = False) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not is_real(value):
        raise invalid(key, f"must be a number, got {_short(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise invalid(key, "is out of range (an integer too large for a float)") from None
    if not math.isfinite(value) or value < lo or value > hi or (lo_open and value == lo):
        raise invalid(key, f"must lie in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value:g}")
    return value


def _int(body: dict, key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not is_int(value) or not lo <= value <= hi:
        raise invalid(key, f"must be an integer in [{lo}, {hi}], got {_short(value)}")
    return value


def _bool(body: dict, key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(key, f"must be true or false, got {_short(value)}")
    return value


def check_text(param: str, text) -> str:
    """A string the tokenizer can encode (a lone surrogate such as "\\ud800" cannot)."""
    if not isinstance(text, str):
        raise invalid(param, f"must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(param, "is not valid Unicode (it holds a lone surrogate)") from None
    return text


def _messages(value) -> list[dict]:
    if value is None:
        raise invalid("messages", "is required")
    if not isinstance(value, list) or not value:
        raise invalid("messages", f"must be a non-empty list of messages, got {_short(value)}")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(where, f"must be an object with role and content, got {_short(message)}")
        role = message.get("role")
        if role in ("tool", "function") or message.get("tool_calls"):
            raise invalid(where, "tool messages and tool calls are not implemented by dami serve")
        if role not in ROLES:
            raise invalid(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {_short(role)}")
        unknown = set(message) - {"role", "content", "name"}
        if unknown:
            raise invalid(where, f"unknown field {sorted(unknown)[0]!r}")
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise invalid(
                        f"{where}.content[{j}]",
                        f"only text parts are implemented (no images or audio), got type {_short(kind)}",
                    )
                parts.append(check_text(f"{where}.content[{j}].text", part.get("text")))
            content = "".join(parts)
        elif content is None:
            raise invalid(f"{where}.content", "is required")
        content = check_text(f"{where}.content", content)
        out.append({"role": ROLES[role], "content": content})
    return out


def _prompt(value) -> str | list[int]:
    if value is None:
        raise invalid("prompt", "is required")
    if isinstance(value, str):
        if not value:
            raise invalid("prompt", "must not be empty")
        return check_text("prompt", value)
    if isinstance(value, list) and value and all(is_int(t) for t in value):
        return list(value)
    if isinstance(value, list) and value and all(isinstance(t, (str, list)) for t in value):
        raise invalid(
            "prompt", "give one prompt per request (a string or one list of token ids); use n for several choices"
        )
    raise invalid("prompt", f"must be a non-empty string or a non-empty list of token ids, got {_short(value)}")


def _stop(value) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOP or not all(isinstance(s, str) and s for s in stops):
        raise invalid(
            "stop", f"must be a non-empty string or a list of at most {MAX_STOP} non-empty strings, got {_short(value)}"
        )
    return [check_text("stop", s) for s in stops]


def parse_request(body, route: str, policy: LambdaPolicy, max_n: int) -> GenerationParams:
    """Validate a chat ("chat") or completions ("completion") body; APIError (400) naming the field when bad."""
    if not isinstance(body, dict):
        raise invalid("body", f"must be a JSON object, got {type(body).__name__}")
    allowed = CHAT_FIELDS if route == "chat" else COMPLETION_FIELDS
    for key in body:
        if key not in allowed:
            raise invalid(
                key, "unknown field (not part of the OpenAI API that dami serve implements)", code="unknown_field"
            )
    for key, harmless in NOT_IMPLEMENTED.items():
        if key in allowed and _asks(body.get(key), harmless):
            raise invalid(key, f"is not implemented by dami serve (got {_short(body[key])})", code="not_implemented")
    body = dict(body)
    try:
        lam = policy.parse(body)  # removes lam / reasoning_effort, checks max_tokens / max_completion_tokens
    except RequestError as err:
        raise invalid(err.field, str(err).removeprefix(err.field + ": ")) from None
    params = GenerationParams(route=route, lam=lam)
    if route == "chat":
        params.messages = _messages(body.get("messages"))
        params.max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        params.logprobs = _bool(body, "logprobs")
        top = _int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
        if top is not None and not params.logprobs:
            raise invalid("top_logprobs", "needs logprobs: true")
        params.top_logprobs = top or 0
    else:
        params.prompt = _prompt(body.get("prompt"))
        params.max_tokens = body.get("max_tokens")
        top = _int(body, "logprobs", 0, MAX_TOP_LOGPROBS)
        params.logprobs, params.top_logprobs = top is not None, top or 0
    params.n = _int(body, "n", 1, max_n) or 1
    params.temperature = _number(body, "temperature", 0.0, 2.0)
    params.top_p = _number(body, "top_p", 0.0, 1.0, lo_open=True)
    params.stop = _stop(body.get("stop"))
    params.stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise invalid("stream_options", f'must be {{"include_usage": true|false}}, got {_short(options)}')
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise invalid("stream_options.include_usage", f"must be true or false, got {_short(usage)}")
        params.include_usage = bool(usage)
    params.seed = _int(body, "seed", -(2**63), 2**63 - 1)
    return params


def request_id_of(request) -> str:
    """The client's x-request-id (printable, at most 128 characters), else a fresh one."""
    given = request.headers.get("x-request-id")
    if given is None:
        return f"req-{uuid.uuid4().hex}"
    if not (0 < len(given) <= 128 and given.isprintable()):
        raise invalid("x-request-id", "must be 1 to 128 printable characters")
    return given


async def read_json(request):
    """The request's body parsed as JSON; 400 naming `body` when it is not JSON."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise invalid("body", f"is not valid JSON ({err})") from None
    except RecursionError:
        raise invalid("body", "is nested too deeply") from None
