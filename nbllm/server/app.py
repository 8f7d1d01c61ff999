"""The OpenAI-compatible HTTP app over one live engine: `build_app(llm, model_name=None, api_key=None, options=None)`.

Endpoints: GET /health, /ping, /version, /load, /v1/models, /metrics (Prometheus, vLLM's
names), /tokenizer_info; POST /v1/completions, /v1/chat/completions, /invocations
(either, by the body), /tokenize, /detokenize. With an API key every endpoint but
/health and /ping needs `Authorization: Bearer <key>` (/metrics too, unless
`options.metrics_public`). The layers around the routes are middleware.py's; the
options are ServerOptions. The engine is any EngineClient (an LLM, normally). The app
holds no global state: several apps (and the notebook itself) can share one engine,
and continuous batching serves them together; `app.state.nbllm` is its ServerState.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, Optional

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.middleware.cors import CORSMiddleware
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from nbllm.protocol import EngineClient
from nbllm.server import chat, completions, tokenization
from nbllm.server.errors import OpenAIError, bad_request, install_error_handlers
from nbllm.server.middleware import LOCAL_NAMES, BodyLimit, HostCheck, KeepAliveOnError, RequireKey, \
    is_loopback, route_path
from nbllm.server.options import ServerOptions
from nbllm.server.prometheus import EngineCollector
from nbllm.server.protocol import ChatCompletionRequest, CompletionRequest
from nbllm.server.responses import ErrorResponse, ModelCard, ModelList
from nbllm.server.state import ServerState

_ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 503)}
_GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/invocations"})


def build_app(llm: EngineClient, model_name: Optional[str] = None, api_key: Optional[str] = None,
              options: Optional[ServerOptions] = None) -> FastAPI:
    """An app serving `llm` under `model_name` (default: llm.model_name)."""
    options = options or ServerOptions()
    state = ServerState(llm, model_name or llm.model_name, api_key or None, options)
    app = FastAPI(title="nbllm", summary="OpenAI-compatible API over an nbllm engine", version=nbllm_version())
    app.state.nbllm = state
    install_error_handlers(app)
    for router in (_info_router(state), completions.build_router(state), chat.build_router(state),
                   tokenization.build_router(state), _invocations_router(state)):
        app.include_router(router, responses=_ERRORS)
    # Added innermost first: the last one added sees the request first.
    app.add_middleware(_Admission, state=state)
    if state.api_key is not None:
        open_paths = {"/health", "/ping"} | ({"/metrics"} if options.metrics_public else set())
        app.add_middleware(RequireKey, api_key=state.api_key, open_paths=open_paths)
    app.add_middleware(BodyLimit, limit=options.max_request_bytes)
    if options.allowed_hosts or is_loopback(options.bound_host):
        local = (*LOCAL_NAMES, options.bound_host) if is_loopback(options.bound_host) else ()
        app.add_middleware(HostCheck, allowed=[*local, *options.allowed_hosts])
    if options.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(options.allowed_origins), allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=False)
    app.add_middleware(KeepAliveOnError)
    if options.root_path:
        app.add_middleware(_RootPath, root_path=options.root_path)
    return app


def nbllm_version() -> str:
    try:
        return metadata.version("nbllm")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


class _RootPath:
    """vLLM's --root-path: the prefix a proxy puts before the routes (served with and without it)."""

    def __init__(self, app: ASGIApp, root_path: str):
        self.app, self.root_path = app, root_path.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not scope.get("root_path"):
            scope = {**scope, "root_path": self.root_path}
        await self.app(scope, receive, send)


class _Admission:
    """Generation requests: refused with 503 once the server is stopping, else counted while answered
    (vLLM's /load; a stopping server waits for these), streams until their last chunk."""

    def __init__(self, app: ASGIApp, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) not in _GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        if self.state.draining:
            error = OpenAIError(503, "the server is shutting down and takes no new requests")
            await JSONResponse(error.to_dict(), status_code=503)(scope, receive, send)
            return
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1


def _info_router(state: ServerState) -> APIRouter:
    router = APIRouter()
    llm = state.llm
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(llm, state.model_name, state.stats))

    @router.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if llm.is_running else 503)

    @router.get("/ping")
    async def ping() -> Response:  # SageMaker's name for /health
        return await health()

    @router.get("/version")
    async def version() -> dict[str, str]:
        return {"version": nbllm_version()}

    @router.get("/load")
    async def load() -> dict[str, int]:
        if not state.options.enable_server_load_tracking:
            raise OpenAIError(404, "load tracking is off (nbllm serve --enable-server-load-tracking)")
        return {"server_load": state.in_flight}

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


def _invocations_router(state: ServerState) -> APIRouter:
    """SageMaker's POST /invocations: a chat request when the body has `messages`, a completion otherwise."""
    router = APIRouter()

    @router.post("/invocations")
    async def invocations(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            raise bad_request("malformed JSON body") from None
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        try:
            if "messages" in body:
                return await chat.chat_completion(state, ChatCompletionRequest.model_validate(body), request)
            if "prompt" in body:
                return await completions.complete(state, CompletionRequest.model_validate(body), request)
        except ValidationError as exc:  # answered like FastAPI's own body validation
            raise RequestValidationError(exc.errors()) from None
        raise bad_request("an invocation needs `messages` (a chat) or `prompt` (a completion)", "messages")

    return router
