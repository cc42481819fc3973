"""The REST app that `qelm serve-model` (serving.model_server) runs under uvicorn: MLflow's scoring server
for the model folder in $QELM_SERVED_MODEL, behind a request-size limit.

Why not plain `mlflow models serve`: MLflow's server reads and parses every body before the model sees
it, and offers no size limit (only MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT, 60 s; uvicorn's
h11-max-incomplete-event-size bounds headers, not bodies). Measured: 900,000 rows of valid JSON (9 MB)
took 50 s to parse before the model refused them, 10 MB of binary came back echoed as a 50 MB error,
and on a busy machine such requests ended in MLflow's 504. Here a body over MAX_BODY_BYTES is answered
413 with a one-line message, its bytes read and dropped as they arrive (answering before the upload ends
resets the connection of clients that send `Connection: close`, e.g. urllib, so they would see no
answer); a client that waits on `Expect: 100-continue` is answered at once. Everything else is MLflow's
app unchanged: /invocations, /ping, /health, /version, formats, errors.
"""
from __future__ import annotations

import json
import os

from qelm_core import threads

MAX_BODY_BYTES = 1 << 20  # 1 MiB: MAX_ROWS (10,000) rows of context ids are ~150 kB
MODEL_ENV = "QELM_SERVED_MODEL"


def _too_large(size: str, limit: int) -> bytes:
    return json.dumps({"error_code": "RESOURCE_LIMIT_EXCEEDED", "message": (
        f"request body of {size} bytes is over the limit of {limit:,} bytes; split the rows into smaller "
        "requests")}).encode()


async def _drain(receive) -> None:
    message = {"more_body": True}
    while message.get("more_body") and message.get("type") != "http.disconnect":
        message = await receive()


class BodyLimit:
    """ASGI middleware: 413 for a declared Content-Length over `limit`, or a streamed body that grows
    past it; smaller bodies are read here and replayed to `app` (MLflow reads the whole body anyway)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            if headers.get(b"expect", b"").lower() != b"100-continue":  # else the body is never sent
                await _drain(receive)
            return await self._refuse(send, f"{int(declared):,}")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                if more:
                    await _drain(receive)
                return await self._refuse(send, f"over {size:,}" if more else f"{size:,}")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:  # later calls wait for the client's disconnect, as ASGI apps expect
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send, size: str) -> None:
        body = _too_large(size, self.limit)
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def build_app(model_path: str):
    from mlflow.pyfunc import scoring_server

    # One request's state (rows x 2^n) is small for any served student, so 1 thread (threads_for(0));
    # requests run in parallel across uvicorn workers, each allotted cores // workers (QELM_CORES).
    threads.use(0)
    return BodyLimit(scoring_server.init(scoring_server.load_model_with_mlflow_config(model_path)))


app = build_app(os.environ[MODEL_ENV]) if MODEL_ENV in os.environ else None  # imported by uvicorn
