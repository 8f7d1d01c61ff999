"""%%generate's output constraint: `--json NAME`, `--choice a,b,c` or `--regex PATTERN` as StructuredOutputsParams.

At most one flag; `--json` names a variable of the user namespace holding the JSON
schema (a dict, JSON text or a pydantic model class). Every mistake the cell can
see (two flags, an unknown variable, a value that is no schema) is a UsageError
naming the flag; `refused` turns the engine's refusal at submission (a schema
keyword it cannot enforce, a regex that does not compile) into one too.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Optional

from IPython.core.error import UsageError

from nbllm.structured_outputs import StructuredOutputsParams

FLAGS = ("json", "choice", "regex")


def constraint_of(args: Any, namespace: Mapping[str, Any]) -> Optional[StructuredOutputsParams]:
    """The constraint the parsed arguments ask for, or None without --json, --choice and --regex."""
    given = [f"--{flag}" for flag in FLAGS if getattr(args, flag) is not None]
    if len(given) > 1:
        raise UsageError(f"%%generate: give one of --json, --choice and --regex, got {' and '.join(given)}")
    if not given:
        return None
    if args.beams is not None:
        raise UsageError(f"%%generate: --beams cannot be combined with {given[0]} (beam search is not constrained)")
    if args.json is not None:
        if args.json not in namespace:
            raise UsageError(f"%%generate --json: {args.json!r} is not a defined variable (it names the variable "
                             f"holding the schema: a dict, JSON text or a pydantic model class)")
        spec: dict[str, Any] = {"json": namespace[args.json]}
    elif args.choice is not None:
        spec = {"choice": [choice.strip() for choice in args.choice.split(",")]}
    else:
        spec = {"regex": args.regex}
    try:
        return StructuredOutputsParams(**spec)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"%%generate {given[0]}: {exc}") from None


@contextmanager
def refused(constraint: Optional[StructuredOutputsParams]) -> Iterator[None]:
    """The engine's ValueError about the constraint (raised when the prompts are submitted) as a UsageError."""
    try:
        yield
    except ValueError as exc:
        if constraint is None or not str(exc).startswith("structured_outputs"):
            raise
        raise UsageError(f"%%generate --{constraint.kind}: {exc}") from None
