"""StructuredOutputsParams: the constraint a request's output must satisfy (vLLM's name and fields).

Exactly one constraint per request: a JSON schema (a dict, JSON text, or a pydantic
model class, kept as a dict), a regular expression, a list of choices, a grammar
(xgrammar's EBNF with a `root` rule, or Lark), or `json_object=True` for any JSON
object. The shape is checked here, where the request is made; whether the engine can
compile the constraint is checked by the engine before anything is scheduled
(nbllm/engine/grammar.py). Plain data, importing neither torch nor the grammar engine.
"""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass
from typing import Any, Optional, Union

CONSTRAINT_KINDS = ("json", "regex", "choice", "grammar", "json_object")


def _schema_of(value: Any) -> dict:
    """A JSON schema dict from a dict, JSON text or a pydantic model class."""
    if isinstance(value, type):
        from pydantic import BaseModel

        if issubclass(value, BaseModel):
            return value.model_json_schema()
        raise TypeError(f"structured_outputs.json must be a JSON schema (dict or JSON text) or a pydantic model "
                        f"class, got the class {value.__name__}")
    if isinstance(value, str):
        try:
            value = jsonlib.loads(value)
        except jsonlib.JSONDecodeError as exc:
            raise ValueError(f"structured_outputs.json is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise TypeError(f"structured_outputs.json must be a JSON schema object (dict, JSON text or pydantic model "
                        f"class), got {type(value).__name__}: {value!r}")
    try:
        jsonlib.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"structured_outputs.json must hold only JSON values: {exc}") from None
    return value


@dataclass
class StructuredOutputsParams:
    """What the output must match: set exactly one of json, regex, choice, grammar, json_object.

    disable_any_whitespace asks for JSON without optional whitespace (compact output,
    fewer tokens: small models otherwise tend to wander in whitespace).
    whitespace_pattern is vLLM's field for the outlines and guidance backends; nbllm's
    engine (xgrammar) rejects it, a remote vLLM server may honour it.
    """

    json: Union[None, str, dict, type] = None
    regex: Optional[str] = None
    choice: Optional[list[str]] = None
    grammar: Optional[str] = None
    json_object: Optional[bool] = None
    disable_any_whitespace: bool = False
    whitespace_pattern: Optional[str] = None

    def __post_init__(self) -> None:
        if self.json is not None:
            self.json = _schema_of(self.json)
        if self.json_object is False:
            self.json_object = None  # "not a JSON object constraint": no constraint of that kind
        for name in ("regex", "grammar", "whitespace_pattern"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"structured_outputs.{name} must be a str, got {type(value).__name__}: {value!r}")
        if self.grammar is not None and not self.grammar.strip():
            raise ValueError("structured_outputs.grammar is empty")
        if self.choice is not None:
            if isinstance(self.choice, str) or not isinstance(self.choice, (list, tuple)) or not all(
                    isinstance(c, str) for c in self.choice):
                raise TypeError(f"structured_outputs.choice must be a list of str, got {self.choice!r}")
            if not self.choice or any(c == "" for c in self.choice):
                raise ValueError(f"structured_outputs.choice must be a non-empty list of non-empty strings, "
                                 f"got {self.choice!r}")
            self.choice = list(self.choice)
        if self.json_object is not None and self.json_object is not True:
            raise TypeError(f"structured_outputs.json_object must be True or False, got {self.json_object!r}")
        if not isinstance(self.disable_any_whitespace, bool):
            raise TypeError(f"structured_outputs.disable_any_whitespace must be a bool, "
                            f"got {self.disable_any_whitespace!r}")
        given = [kind for kind in CONSTRAINT_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            found = f"got {' and '.join(given)}" if given else "got none"
            raise ValueError(f"structured_outputs takes exactly one constraint of {', '.join(CONSTRAINT_KINDS)}; "
                             f"{found}")

    @property
    def kind(self) -> str:
        """Which constraint is set: "json", "regex", "choice", "grammar" or "json_object"."""
        return next(kind for kind in CONSTRAINT_KINDS if getattr(self, kind) is not None)

    def cache_key(self) -> str:
        """Equal for constraints that compile to the same grammar."""
        return jsonlib.dumps([self.kind, getattr(self, self.kind), self.disable_any_whitespace,
                              self.whitespace_pattern], sort_keys=True)


GuidedDecodingParams = StructuredOutputsParams  # vLLM's older name, with the same fields

__all__ = ["StructuredOutputsParams", "GuidedDecodingParams", "CONSTRAINT_KINDS"]
