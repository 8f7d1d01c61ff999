"""The IPython extension: `%nbllm` (load, status, unload, connect, monitor) and `%%generate`.

`%load_ext nbllm` registers NbllmMagics on the shell. Every magic uses the shell's
one EngineSession (see session.py). A bad option raises UsageError carrying the
usage text; a bad value for the engine or the sampler does too, with its message.
The engine and sampling options are EngineConfig's and SamplingParams' own fields
(field_options.py), so a field added there is an option here.
"""

from __future__ import annotations

import inspect
import keyword
import os
import shlex
import time
from typing import Any, Callable, Optional, Sequence

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser, argument, magic_arguments

from nbllm.config import EngineConfig
from nbllm.field_options import FieldOption, field_options, given
from nbllm.notebook import cell_constraint, generate_cell
from nbllm.notebook.engine_status import engine_status, missing as engine_status_missing
from nbllm.notebook.session import EngineSession, session_for
from nbllm.protocol import EngineClient
from nbllm.sampling_params import RequestOutputKind, SamplingParams

DEFAULT_MAX_TOKENS = 128
_LOAD_OPTIONS = tuple(field_options(EngineConfig, exclude={"model"}))  # the model is the positional argument
# SamplingParams fields %%generate spells out below (own default, parsing or help), and ones whose output
# a cell does not show (no text, prompt logprobs, logprobs in another layout).
_SAMPLING_OPTIONS = tuple(field_options(SamplingParams, exclude={"max_tokens", "logprobs", "stop", "detokenize",
                                                                  "prompt_logprobs", "flat_logprobs"}))


def load_ipython_extension(ip: Any) -> None:
    """Register the magics (`%load_ext nbllm`); the shell gets its EngineSession on first use."""
    ip.register_magics(NbllmMagics)


def _parse(parser: MagicArgumentParser, line: str) -> Any:
    """Parse like a shell would (quotes removed, unlike IPython's own splitting); UsageError with the help."""
    try:
        return parser.parse_args(shlex.split(line))
    except (UsageError, ValueError) as exc:
        raise UsageError(f"{exc}\n\n{parser.format_help()}") from None


def _load_parser() -> MagicArgumentParser:
    parser = MagicArgumentParser(prog="nbllm load", description="Load (or replace) the kernel's engine.")
    parser.add_argument("model", nargs="?", default=None,
                        help="a Hugging Face folder or .gguf file; nothing loads the default model")
    for option in _LOAD_OPTIONS:
        parser.add_argument(*option.flags, **option.kwargs)
    return parser


def _connect_parser() -> MagicArgumentParser:
    parser = MagicArgumentParser(prog="nbllm connect",
                                 description="Use an OpenAI-compatible server as the kernel's engine.")
    parser.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", default=None, help="the served model's name")
    return parser


def _monitor_parser() -> MagicArgumentParser:
    parser = MagicArgumentParser(prog="nbllm monitor", description="Show a live KV-cache monitor.")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between updates")
    return parser


def _no_argument_parser(command: str) -> MagicArgumentParser:
    return MagicArgumentParser(prog=f"nbllm {command}")


def _arguments(options: Sequence[FieldOption]) -> Callable[[Callable], Callable]:
    """Like a stack of `@argument` lines, one per option, in the options' order."""
    def decorate(func: Callable) -> Callable:
        for option in reversed(options):  # magic_arguments adds decorators bottom-up
            argument(*option.flags, **option.kwargs)(func)
        return func
    return decorate


@magics_class
class NbllmMagics(Magics):
    """`%nbllm` manages the kernel's engine; `%%generate` runs the cell as a prompt."""

    @property
    def session(self) -> EngineSession:
        return session_for(self.shell)

    # ------------------------------------------------------------------ %nbllm
    @line_magic
    def nbllm(self, line: str) -> Any:
        """Manage the kernel's engine. Usage:

        %nbllm load [MODEL] [--dtype D] [--max-model-len N] [--num-kv-blocks N] [...]
        %nbllm status
        %nbllm unload
        %nbllm connect URL [--api-key KEY] [--model NAME]
        %nbllm monitor [--interval SECONDS]
        """
        command, _, rest = line.strip().partition(" ")
        commands: dict[str, Callable[[str], Any]] = {
            "load": self._load, "status": self._status, "unload": self._unload,
            "connect": self._connect, "monitor": self._monitor}
        if command not in commands:
            what = f"unknown command {command!r}" if command else "a command is needed"
            raise UsageError(f"%nbllm: {what}. {inspect.cleandoc(self.nbllm.__doc__ or '')}")
        return commands[command](rest)

    def _load(self, rest: str) -> None:
        parser = _load_parser()
        args = _parse(parser, rest)
        kwargs = given(args, _LOAD_OPTIONS)
        start = time.perf_counter()
        try:
            llm = self.session.load(os.path.expanduser(args.model) if args.model else None, **kwargs)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"%nbllm load: {exc}\n\n{parser.format_help()}") from None
        stats = llm.get_stats()
        print(f"Loaded {llm.model_name} in {time.perf_counter() - start:.1f}s: "
              f"{stats.num_blocks_total} KV blocks of {stats.block_size} tokens")

    def _status(self, rest: str) -> Any:
        _parse(_no_argument_parser("status"), rest)
        engine = self.session.engine
        if engine is None:
            print("No engine loaded; the first use loads the default model (or run %nbllm load).")
            return None
        try:
            return engine_status(engine)
        except NotImplementedError:  # an engine that reports no stats at all
            print(f"{engine.model_name} ({type(engine).__name__}): this engine reports no metrics.")
            return None

    def _unload(self, rest: str) -> None:
        _parse(_no_argument_parser("unload"), rest)
        print("Engine unloaded." if self.session.unload() else "No engine was loaded.")

    def _connect(self, rest: str) -> None:
        args = _parse(_connect_parser(), rest)
        from nbllm.client import RemoteLLM

        options = {name: value for name, value in (("api_key", args.api_key), ("model", args.model)) if value}
        try:
            remote = RemoteLLM(args.url, **options)  # connecting probes the server: a dead URL fails here
        except RuntimeError as exc:  # RemoteError: unreachable, a wrong key, an unknown model
            raise UsageError(f"%nbllm connect: {exc}") from None
        self.session.set_engine(remote, owned=True)
        missing = engine_status_missing(remote)
        print(f"Connected to {args.url}: {remote.model_name}"
              + (f" (unavailable: {', '.join(missing)})" if missing else ""))

    def _monitor(self, rest: str) -> Any:
        args = _parse(_monitor_parser(), rest)
        from nbllm.notebook.kv_monitor import KVCacheMonitor

        try:
            return KVCacheMonitor(self.session.get_engine(), interval=args.interval)
        except ValueError as exc:
            raise UsageError(f"%nbllm monitor: {exc}") from None

    # ------------------------------------------------------------------ %%generate
    @magic_arguments(name="%generate")  # the usage line adds the other "%"
    @argument("--max-tokens", type=int, default=None, help=f"tokens per completion (default {DEFAULT_MAX_TOKENS})")
    @_arguments(_SAMPLING_OPTIONS)
    @argument("--stop", action="append", default=None, help="a stop string (repeatable; \\n and \\t allowed)")
    @argument("--chat", action="store_true", help="apply the model's chat template")
    @argument("--system", default=None, help="a system message (implies --chat)")
    @argument("--beams", type=int, default=None, metavar="K", help="beam search with K beams; shows the tree")
    @argument("--logprobs", type=int, nargs="?", const=5, default=None, metavar="K",
              help="show the token-probability view (top K alternatives, default 5)")
    @argument("--format", choices=generate_cell.FORMATS, default="text", help="how to show the text")
    @argument("--out", default=None, metavar="NAME", help="store the result in this variable (not shown again)")
    @argument("--raw", action="store_true", help="send the body as written: no {name} filling in")
    @argument("--llm", default=None, metavar="NAME", help="a variable holding the engine to use")
    @argument("--json", default=None, metavar="SCHEMA",
              help="output JSON matching the schema in this variable (a dict, JSON text or pydantic model)")
    @argument("--choice", default=None, metavar="A,B,C", help="output exactly one of these comma-separated choices")
    @argument("--regex", default=None, metavar="PATTERN", help="output text matching this regular expression")
    @cell_magic
    def generate(self, line: str, cell: str) -> Any:
        """Generate from the cell body; `---` lines separate prompts run as one batch."""
        parser = self.generate.parser
        args = _parse(parser, line)
        if args.out is not None and (not args.out.isidentifier() or keyword.iskeyword(args.out)):
            raise UsageError(f"%%generate: --out needs a variable name, got {args.out!r}\n\n{parser.format_help()}")
        if args.beams is not None and (args.n not in (None, 1) or args.logprobs is not None):
            raise UsageError(f"%%generate: --beams cannot be combined with -n or --logprobs\n\n{parser.format_help()}")
        constraint = cell_constraint.constraint_of(args, self.shell.user_ns)
        prompts = generate_cell.split_prompts(cell)
        if not args.raw:
            prompts = [generate_cell.interpolate(p, self.shell.user_ns) for p in prompts]
        llm = self._engine_named(args.llm)
        if args.logprobs is not None and not llm.capabilities.logprobs:
            raise UsageError(f"%%generate --logprobs: this engine ({type(llm).__name__}) returns no logprobs "
                             f"(its capabilities.logprobs is False)")
        chat = args.chat or args.system is not None
        max_tokens = DEFAULT_MAX_TOKENS if args.max_tokens is None else args.max_tokens
        if args.beams is not None:
            try:
                beams = generate_cell.run_beam_search(llm, prompts, args.beams, max_tokens, chat, args.system)
            except (ValueError, TypeError) as exc:
                raise UsageError(f"%%generate: {exc}\n\n{parser.format_help()}") from None
            self._store(args.out, beams.outputs[0] if len(beams.outputs) == 1 else beams.outputs)
            if beams.interrupted:
                raise generate_cell.CellInterrupted(_interrupted(f"{beams.steps} steps", args.out))
            return None
        params = self._sampling_params(llm, args, max_tokens, parser)
        if constraint is not None:
            params = params.updated(structured_outputs=constraint)
        with cell_constraint.refused(constraint):
            run = generate_cell.stream_into_output(llm, prompts, params, args.format, chat, args.system)
        self._store(args.out, generate_cell.result_value(run.texts))
        if run.interrupted:
            raise generate_cell.CellInterrupted(_interrupted(run.generated, args.out))
        if args.logprobs is not None:
            generate_cell.show_token_probabilities(run.finals)
        if args.format == "code":
            self.shell.set_next_input(generate_cell.code_of(run.texts[0][0]), replace=False)
        return None  # the text is shown once, streamed; --out keeps it without an Out[] echo

    def _store(self, name: Optional[str], value: Any) -> None:
        if name is not None:
            self.shell.user_ns[name] = value

    def _engine_named(self, name: Optional[str]) -> EngineClient:
        if name is None:
            return self.session.get_engine()
        if name not in self.shell.user_ns:
            raise UsageError(f"%%generate: --llm names {name!r}, but no variable of that name is defined")
        return self.shell.user_ns[name]

    @staticmethod
    def _sampling_params(llm: EngineClient, args: Any, max_tokens: int,
                         parser: MagicArgumentParser) -> SamplingParams:
        changes: dict[str, Any] = {**given(args, _SAMPLING_OPTIONS), "max_tokens": max_tokens,
                                   "output_kind": RequestOutputKind.CUMULATIVE}
        if args.logprobs is not None:
            changes["logprobs"] = args.logprobs
        if args.stop:
            changes["stop"] = [_unescape(s) for s in args.stop]
        try:
            return llm.get_default_sampling_params().updated(**changes)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"%%generate: {exc}\n\n{parser.format_help()}") from None


def _interrupted(progress: str, out: Optional[str]) -> str:
    kept = f"; the text so far is in {out}" if out else ""
    return f"interrupted after {progress}{kept}"


def _unescape(text: str) -> str:
    """Turn the escapes \\n, \\t and \\\\ typed in a magic's line into the characters."""
    return text.replace("\\\\", "\0").replace("\\n", "\n").replace("\\t", "\t").replace("\0", "\\")
