"""Command-line options that mirror a dataclass's fields, so option lists are derived, never hand-kept.

`field_options(cls)` gives one option per field of a scalar type (int, float, str, bool,
or Optional of one): `--max-num-seqs N` for `max_num_seqs`, `-n N` for a one-letter
name, a switch pair for a bool (`--enforce-eager` / `--no-enforce-eager`, as vLLM
spells them). Every option defaults to None, so `given(args, options)` holds only what
the user set and the dataclass keeps its own defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Collection, Optional, Union

_SCALARS = (int, float, str, bool)


@dataclass(frozen=True)
class FieldOption:
    """One option: `parser.add_argument(*option.flags, **option.kwargs)`."""

    name: str
    flags: tuple[str, ...]
    kwargs: dict[str, Any]


def field_options(cls: type, exclude: Collection[str] = ()) -> list[FieldOption]:
    """An option per scalar field of the dataclass `cls` (fields in `exclude` left out), in field order."""
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        kind = _scalar_type(hints[f.name])
        if f.name in exclude or kind is None:
            continue
        dashed = f.name.replace("_", "-")
        default = "" if f.default in (None, dataclasses.MISSING) else f" (default {f.default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": f"{cls.__name__}.{f.name}{default}"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
        flags = (f"-{dashed}",) if len(dashed) == 1 else (f"--{dashed}",)
        options.append(FieldOption(f.name, flags, kwargs))
    return options


def given(args: Any, options: Collection[FieldOption]) -> dict[str, Any]:
    """The options the user set, by field name (an unset option is None)."""
    return {o.name: getattr(args, o.name) for o in options if getattr(args, o.name) is not None}


def _scalar_type(hint: Any) -> Optional[type]:
    """int, float, str or bool for a field typed so or Optional of it; None for anything else."""
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is Union else [hint]
    return kinds[0] if len(kinds) == 1 and kinds[0] in _SCALARS else None
