"""Which λ a request runs at: its `lam` field, its `reasoning_effort`, or the server's default.

A request body may carry (OpenAI clients send `lam` through ``extra_body``):
- ``"lam": 0.3``: a number in [0, 1] (outside only when the server allows extrapolation);
- ``"lam": "auto"``: the server's λ(q) estimator chooses (DAMI-Conf or DAMI-Pref);
- ``"reasoning_effort": "low" | "medium" | "high"``: mapped to the server's configured λ values.
Neither: the server's default (a number or "auto"). Anything else is a `RequestError` naming the field,
which the server answers with HTTP 400. Every λ, from a request or a flag, must be finite in fp32 (the dtype of
the engine's λ rows): 1e308 passes a float64 check but is inf in the kernels.

`RequestLambdas` is the registry of the λ of the requests in flight, which the engine reads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from dami_kernels.validation import (
    FP32_MAX,
    check_finite,
    check_float32,
    check_lambda_range,
    is_positive_int,
    real_number,
)

AUTO = "auto"
DEFAULT_EFFORTS = {"low": 0.0, "medium": 0.5, "high": 1.0}
MAX_TOKENS_FIELDS = ("max_completion_tokens", "max_tokens")


class RequestError(ValueError):
    """A bad request: `field` names the offending body field; the message is one line."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class LambdaChoice:
    """What a request asked for: lam (a float, or None when the estimator must choose), where it came from
    ("request", "auto", "reasoning_effort:<level>", "default", "default:auto"), and the max-tokens field
    it set (or None)."""

    lam: float | None
    source: str
    max_tokens_field: str | None = None

    @property
    def auto(self) -> bool:
        return self.lam is None


@dataclass
class LambdaPolicy:
    """The server's λ rules: default λ (a number or "auto"), the reasoning_effort levels, extrapolation,
    and whether an estimator is loaded (needed for "auto")."""

    default: float | str = 0.0
    efforts: dict = field(default_factory=lambda: dict(DEFAULT_EFFORTS))
    allow_extrapolation: bool = False
    has_estimator: bool = False

    def __post_init__(self):
        self.efforts = {str(k): self.check_number(v, f"reasoning_effort level {k!r}") for k, v in self.efforts.items()}
        if self.default == AUTO:
            if not self.has_estimator:
                raise ValueError("the default λ 'auto' needs an estimator (--estimator conf|pref)")
        else:
            self.default = self.check_number(self.default, "default λ")

    def check_number(self, value, name: str) -> float:
        """value as a float; ValueError unless it is a finite number in [0, 1] (any finite with extrapolation)."""
        value = real_number(value, name, "be a number in [0, 1]", got=_short(value), finite="finite in float32")
        check_finite(value, name)
        check_float32(value, name, f"|λ| ≤ {FP32_MAX:.4g}", got=f"{value:g}")
        check_lambda_range(
            value, name, self.allow_extrapolation, hint=" (the server was not started with --allow-extrapolation)"
        )
        return value

    def parse(self, body: dict) -> LambdaChoice:
        """Read and remove `lam` and `reasoning_effort` from a request body; raise RequestError when bad."""
        lam = body.pop("lam", None)
        effort = body.pop("reasoning_effort", None)
        max_field = check_max_tokens(body)
        if lam is not None and effort is not None:
            raise RequestError("lam", "give either lam or reasoning_effort, not both")
        if lam is not None:
            if isinstance(lam, str):
                if lam != AUTO:
                    raise RequestError("lam", f'must be a number in [0, 1] or "auto", got the string {_short(lam)}')
                if not self.has_estimator:
                    raise RequestError("lam", '"auto" needs an estimator; the server was started without --estimator')
                return LambdaChoice(None, "auto", max_field)
            try:
                return LambdaChoice(self.check_number(lam, "lam"), "request", max_field)
            except ValueError as err:
                raise RequestError("lam", str(err).removeprefix("lam ")) from None
        if effort is not None:
            if not isinstance(effort, str) or effort not in self.efforts:
                levels = ", ".join(self.efforts)
                raise RequestError("reasoning_effort", f"must be one of {levels}, got {_short(effort)}")
            return LambdaChoice(self.efforts[effort], f"reasoning_effort:{effort}", max_field)
        if self.default == AUTO:
            return LambdaChoice(None, "default:auto", max_field)
        return LambdaChoice(self.default, "default", max_field)


def check_max_tokens(body: dict) -> str | None:
    """The max-tokens field the body sets (max_completion_tokens or max_tokens), checked to be a positive
    integer; None when it sets neither."""
    found = None
    for name in MAX_TOKENS_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if not is_positive_int(value):
            raise RequestError(name, f"must be a positive integer, got {_short(value)}")
        found = found or name
    return found


def _short(value, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters (error messages quote what a client sent)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ServedLambda:
    """The λ a request runs at, and where it came from (see `LambdaChoice.source`)."""

    lam: float
    source: str


class RequestLambdas:
    """λ of the requests in flight, by engine request id (thread-safe: the server registers, the engine reads)."""

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
