"""`dami serve`: an OpenAI-compatible server for a pair, where every request runs at its own λ (`lam`,
`reasoning_effort`, or "auto" from the λ(q) estimator), on transformers' continuous-batching engine.

Layout: `lambda_policy` (which λ a request asks for; the registry the engine reads), `protocol` (request
validation and OpenAI error bodies), `cb_internals` (every transformers internal used: the λ rows extension of the
engine and the differences between releases), `engine` (the supervised engine, auto λ, logprob scoring), `text`
(incremental detokenization, stop strings, reasoning split), `responses` (OpenAI response objects), `metrics`
(Prometheus), `handlers` (the two generation routes), `app` (the FastAPI app, `ServerThread`, `serve`).
"""

from dami_kernels.serving.app import DEFAULT_MODEL_ID, ServeOptions, ServerThread, bind_socket, build_app, serve
from dami_kernels.serving.lambda_policy import (
    AUTO,
    DEFAULT_EFFORTS,
    LambdaChoice,
    LambdaPolicy,
    RequestError,
    RequestLambdas,
    ServedLambda,
)

__all__ = [
    "AUTO",
    "DEFAULT_EFFORTS",
    "DEFAULT_MODEL_ID",
    "LambdaChoice",
    "LambdaPolicy",
    "RequestError",
    "RequestLambdas",
    "ServeOptions",
    "ServedLambda",
    "ServerThread",
    "bind_socket",
    "build_app",
    "serve",
]
