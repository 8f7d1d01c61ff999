"""`nbllm serve [MODEL] [options]`: load an engine and serve it with uvicorn (127.0.0.1 unless --host).

MODEL is a Hugging Face folder or GGUF file (default: the embedded default model).
Engine options are EngineConfig's fields and server options ServerOptions' fields
(field_options.py), both with vLLM's flag names; an option left out keeps its dataclass
default. Ctrl-C (SIGINT) or SIGTERM stops the server: new requests are refused, and
in-flight ones get --shutdown-timeout seconds to finish.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

from nbllm.config import EngineConfig
from nbllm.field_options import field_options, given
from nbllm.server.options import ServerOptions, as_names

_ENGINE_OPTIONS = tuple(field_options(EngineConfig, exclude={"model"}))  # the model is the positional argument
_SERVER_OPTIONS = tuple(field_options(ServerOptions, exclude={"bound_host"}))  # the bound address is --host


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbllm", description="nbllm: an LLM engine for notebooks, and its server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model over vLLM's OpenAI-compatible HTTP API")
    serve.add_argument("model", nargs="?", default=None, help="model folder or GGUF file (default: embedded model)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=os.environ.get("NBLLM_API_KEY"),
                       help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                            "(default: $NBLLM_API_KEY)")
    serve.add_argument("--served-model-name", default=None, help="the model name clients send (default: MODEL)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    server = serve.add_argument_group("server options")
    for option in _SERVER_OPTIONS:
        server.add_argument(*option.flags, **option.kwargs)
    server.add_argument("--allowed-origins", type=as_names, default=(),
                        help="CORS origins, a JSON list or comma-separated (default: none, no CORS headers)")
    server.add_argument("--allowed-hosts", type=as_names, default=(),
                        help="Host header names to accept besides the bound address (and localhost when bound "
                             "to loopback), a JSON list or comma-separated; '*' accepts any")
    engine = serve.add_argument_group("engine options")
    for option in _ENGINE_OPTIONS:
        engine.add_argument(*option.flags, **option.kwargs)
    return parser


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options given on the command line, as EngineConfig keyword arguments."""
    return given(args, _ENGINE_OPTIONS)


def server_options(args: argparse.Namespace) -> ServerOptions:
    """The server options given on the command line (the rest keep ServerOptions' defaults)."""
    return ServerOptions(**given(args, _SERVER_OPTIONS), allowed_origins=args.allowed_origins,
                         allowed_hosts=args.allowed_hosts, bound_host=args.host)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    import uvicorn

    from nbllm import LLM
    from nbllm.server.app import build_app

    try:
        options = server_options(args)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    try:
        llm = LLM(args.model, **engine_kwargs(args))
    except (ValueError, TypeError, OSError) as exc:  # a bad model path or engine option
        print(f"nbllm serve: {exc}", file=sys.stderr)
        return 2
    try:
        app = build_app(llm, args.served_model_name or args.model, args.api_key, options)
        state = app.state.nbllm

        class DrainingServer(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                state.draining = True  # new requests get 503 while the open ones finish
                super().handle_exit(sig, frame)

        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                timeout_graceful_shutdown=options.shutdown_timeout)
        DrainingServer(config).run()
        state.close()
    finally:
        llm.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
