"""`dami serve`: an OpenAI-compatible server for a pair, on transformers' serving stack and continuous batching,
where every request runs at its own λ (`lam`, `reasoning_effort`, or "auto" from the λ(q) estimator).

Layout: `lam_policy` (which λ a request asks for), `rows` (the engine extension: λ per packed token row,
every step), `engine` (the CB manager and the "auto" estimator), `handlers` (the λ-aware endpoints),
`models` (one pinned pair), `app` (build and run the server), `versions` (the transformers releases' differences,
by feature detection: 5.17 and 5.24 are tested).
"""
from dami_kernels.serving.app import DEFAULT_MODEL_ID, ServeOptions, ServerThread, build_app, serve
from dami_kernels.serving.lam_policy import AUTO, DEFAULT_EFFORTS, LamChoice, LamPolicy, RequestError
from dami_kernels.serving.rows import LambdaRowsProcessorList, RequestLambdas, ServedLambda, attach_lambda_rows

__all__ = [
    "AUTO",
    "DEFAULT_EFFORTS",
    "DEFAULT_MODEL_ID",
    "LamChoice",
    "LamPolicy",
    "LambdaRowsProcessorList",
    "RequestError",
    "RequestLambdas",
    "ServeOptions",
    "ServedLambda",
    "ServerThread",
    "attach_lambda_rows",
    "build_app",
    "serve",
]
