"""The HTTP service: seqshard's models behind a small JSON API, batched and monitored.

- `settings`: every flag of `seqshard serve` with its default, in one dataclass.
- `app`: the FastAPI application factory and the uvicorn runner (graceful SIGTERM).
- `service`: the loaded model, what it can do, request validation and one batch through the batch code path.
- `queue`: gathers concurrent requests into token-budget batches for a model worker thread.
- `schemas`, `errors`, `middleware`, `dependencies`, `limits`, `routes/`: the API surface; `openapi`: its document,
  narrowed to this server's model and flags.
- `protocol`: the HTTP connection (uvicorn's httptools protocol) with header limits and timeouts.
- `metrics`: Prometheus series and the JSON figures of `GET /metrics`.
- `columns`: the engine's output columns as the API's JSON predictions, and back (for `seqshard predict`).
- `healthcheck`: the containers' HEALTHCHECK command (standard library only).

The Python client of this API is `seqshard.client`.
"""
