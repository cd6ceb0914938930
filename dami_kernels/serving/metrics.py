"""`GET /metrics` of `dami serve`, in Prometheus' text format (prometheus_client, one registry per server).

Exported: `dami_requests_total{route,status}`, `dami_prompt_tokens_total`, `dami_generation_tokens_total`,
`dami_time_to_first_token_seconds`, `dami_time_per_output_token_seconds` and `dami_request_latency_seconds`
(histograms), `dami_requests_running` and `dami_requests_waiting` (the engine's scheduler, read at scrape time),
`dami_lambda` (histogram of the λ each request ran at) and `dami_engine_restarts`.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAMBDA_BUCKETS = (-1.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """The server's metrics. engine: a `PairEngine` (running/waiting requests and restarts are read from it)."""

    def __init__(self, engine):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "dami_requests", "HTTP requests by route and status code", ["route", "status"], registry=r
        )
        self.prompt_tokens = Counter("dami_prompt_tokens", "Prompt tokens of the requests served", registry=r)
        self.generation_tokens = Counter("dami_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(
            "dami_time_to_first_token_seconds",
            "Time from the request to its first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "dami_time_per_output_token_seconds",
            "Time per generated token after the first",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "dami_request_latency_seconds",
            "Time from the request to its last token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lam = Histogram("dami_lambda", "λ of the generation requests served", buckets=LAMBDA_BUCKETS, registry=r)
        Gauge("dami_requests_running", "Requests in the engine's running batch", registry=r).set_function(
            lambda: engine.load()[0]
        )
        Gauge("dami_requests_waiting", "Requests waiting in the engine", registry=r).set_function(
            lambda: engine.load()[1]
        )
        Gauge("dami_engine_restarts", "Times the engine's worker died and was restarted", registry=r).set_function(
            lambda: engine.restarts
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_choice(self, t_request: float, times: list[float]) -> None:
        """One choice's token arrival times (perf_counter seconds), for the latency histograms."""
        if not times:
            return
        self.generation_tokens.inc(len(times))
        self.ttft.observe(times[0] - t_request)
        self.latency.observe(times[-1] - t_request)
        if len(times) > 1:
            self.tpot.observe((times[-1] - times[0]) / (len(times) - 1))
