"""The OpenAI-compatible HTTP app over one live engine: `build_app(llm, model_name=None, api_key=None)`.

Endpoints: GET /health, GET /v1/models, POST /v1/completions, POST
/v1/chat/completions, POST /tokenize, POST /detokenize, GET /metrics (Prometheus,
vLLM's names). With an API key, every endpoint but /health needs
`Authorization: Bearer <key>`. The engine is any EngineClient (an LLM, normally).
The app holds no global state: several apps (and the notebook itself) can share one
engine, and continuous batching serves them together.
"""

from __future__ import annotations

import hmac
from typing import Any, Optional

from fastapi import APIRouter, FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from nbllm.protocol import EngineClient
from nbllm.server import chat, completions, tokenization
from nbllm.server.errors import OpenAIError, error_body, install_error_handlers
from nbllm.server.prometheus import EngineCollector
from nbllm.server.protocol import ErrorResponse, ModelCard, ModelList
from nbllm.server.state import ServerState

_ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (400, 401, 404)}


def build_app(llm: EngineClient, model_name: Optional[str] = None, api_key: Optional[str] = None) -> FastAPI:
    """An app serving `llm` under `model_name` (default: llm.model_name)."""
    state = ServerState(llm, model_name or llm.model_name, api_key or None)
    app = FastAPI(title="nbllm", summary="OpenAI-compatible API over an nbllm engine", version="1")
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    for router in (_info_router(state, llm), completions.build_router(state), chat.build_router(state),
                   tokenization.build_router(state)):
        app.include_router(router, responses=_ERRORS)
    if state.api_key is not None:
        app.add_middleware(_RequireKey, api_key=state.api_key)
    return app


class _RequireKey:
    """ASGI middleware: 401 unless `Authorization: Bearer <key>`, checked before the body is read.

    A plain ASGI middleware (not BaseHTTPMiddleware) so streaming and disconnect detection are untouched.
    """

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._key):
                body = error_body(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _info_router(state: ServerState, llm: EngineClient) -> APIRouter:
    router = APIRouter()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(llm, state.model_name))

    @router.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=state.model_name, root=llm.model_name,
                                         max_model_len=state.max_model_len)])

    @router.get("/metrics")
    async def metrics() -> Response:
        if not llm.capabilities.metrics:
            raise OpenAIError(404, "this engine reports no metrics")
        return Response(await state.run(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)

    return router
