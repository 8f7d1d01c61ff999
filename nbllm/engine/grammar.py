"""Structured outputs on xgrammar: each constraint compiled once, one matcher per sequence.

`GrammarCompiler` (one per engine) turns StructuredOutputsParams into xgrammar's
CompiledGrammar for the engine's tokenizer. The InputProcessor calls it in the caller's
thread, so a bad schema, regex or grammar raises ValueError before anything is queued.
Compiled constraints live in an LRU cache keyed by the constraint, and the tokenizer's
vocabulary is indexed on the first constraint (about 0.4 s for 49,152 tokens), so an
engine that never sees one pays nothing.

`SequenceGrammar` is one sequence's matcher, made and advanced only in the engine
thread: the sampler asks it for the next-token bitmask, the OutputProcessor feeds it
each sampled token. A preempted sequence keeps its tokens and its matcher, and
recomputation samples only after the last kept token, so no token is fed twice.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any, Iterable, Iterator, Optional

import torch
import xgrammar as xgr

from nbllm.structured_outputs import StructuredOutputsParams

# String formats xgrammar's JSON-schema converter enforces; it ignores any other.
SUPPORTED_FORMATS = frozenset({"email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid",
                               "uri", "uri-reference", "uri-template", "json-pointer", "relative-json-pointer"})
# Keywords xgrammar's converter would silently ignore: refused, so that no output breaks a schema quietly.
IGNORED_KEYWORDS = ("multipleOf", "contains", "minContains", "maxContains", "not", "if", "then", "else",
                    "dependentRequired", "dependentSchemas")
# A JSON string character needing no escape: not a control character, quote, backslash or surrogate.
PLAIN_CHARACTER = "[ !#-\\[\\]-\ud7ff\ue000-\U0010ffff]"
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_ITEMS = ("items", "prefixItems", "additionalProperties", "anyOf", "oneOf", "allOf")


class SequenceGrammar:
    """One sequence's position in its grammar."""

    def __init__(self, grammar: xgr.CompiledGrammar, stop_token_ids: Optional[list[int]] = None):
        self._matcher = xgr.GrammarMatcher(grammar, override_stop_tokens=stop_token_ids or None)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the tokens allowed next into row `row` of an int32 CPU bitmask [rows, ceil(vocab / 32)]."""
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token; False if the grammar does not allow it (the matcher is unchanged)."""
        return self._matcher.accept_token(token_id)

    @property
    def is_terminated(self) -> bool:
        """The grammar is complete and a stop token was accepted: the sequence ends."""
        return self._matcher.is_terminated()


class GrammarCompiler:
    """Compiles constraints for one tokenizer; safe to call from several threads."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int], cache_size: int = 64,
                 max_threads: int = 8):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(stop_token_ids)
        self.cache_size = cache_size
        self.max_threads = max_threads
        self.num_compiled = 0  # compilations done (cache misses)
        self._lock = threading.Lock()
        self._compiler: Optional[xgr.GrammarCompiler] = None
        self._cache: OrderedDict[str, xgr.CompiledGrammar] = OrderedDict()

    def compile(self, params: StructuredOutputsParams) -> xgr.CompiledGrammar:
        """The compiled constraint, from the cache when an equal one was compiled before; ValueError if bad."""
        if not isinstance(params, StructuredOutputsParams):
            raise TypeError(f"structured_outputs must be StructuredOutputsParams, got {type(params).__name__}")
        check_supported(params)
        key = params.cache_key()
        with self._lock:
            grammar = self._cache.get(key)
            if grammar is not None:
                self._cache.move_to_end(key)
                return grammar
            grammar = self._compile(params)
            self.num_compiled += 1
            self._cache[key] = grammar
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return grammar

    def _xgrammar_compiler(self) -> xgr.GrammarCompiler:
        if self._compiler is None:
            try:
                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size,
                                                          stop_token_ids=self.stop_token_ids or None)
            except Exception as exc:  # xgrammar needs a Hugging Face tokenizer it can read
                raise ValueError(f"structured outputs need a Hugging Face tokenizer; xgrammar could not read "
                                 f"this one ({type(self.tokenizer).__name__}): {exc}") from exc
            # Our own LRU decides what stays; xgrammar's cache would hold a second copy.
            self._compiler = xgr.GrammarCompiler(info, max_threads=self.max_threads, cache_enabled=False)
        return self._compiler

    def _compile(self, params: StructuredOutputsParams) -> xgr.CompiledGrammar:
        compiler = self._xgrammar_compiler()
        kind = params.kind
        any_whitespace = not params.disable_any_whitespace
        try:
            if kind == "json":
                return compiler.compile_json_schema(with_enforced_string_lengths(params.json),
                                                    any_whitespace=any_whitespace)
            if kind == "json_object":
                return compiler.compile_json_schema({"type": "object"}, any_whitespace=any_whitespace)
            if kind == "regex":
                return compiler.compile_regex(params.regex)
            if kind == "choice":
                return compiler.compile_grammar(choice_grammar(params.choice))
            if "::=" in params.grammar:
                return compiler.compile_grammar(params.grammar)
            return compiler.compile_lark(params.grammar)
        except Exception as exc:  # xgrammar reports every bad input as an exception from its C++ core
            raise ValueError(f"structured_outputs.{kind} cannot be compiled: {xgrammar_message(exc)}") from None


def choice_grammar(choices: list[str]) -> str:
    """An EBNF grammar matching exactly one of the strings (JSON string escapes are EBNF's too)."""
    return "root ::= " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in choices)


def xgrammar_message(exc: Exception) -> str:
    """The error without xgrammar's "[time] file.cc:line: " prefix."""
    return re.sub(r"^\[[\d:]+\] \S+:\d+: (Check failed: .*? is false: )?", "", str(exc).strip())


def check_supported(params: StructuredOutputsParams) -> None:
    """ValueError for what xgrammar would accept but not enforce."""
    if params.whitespace_pattern is not None:
        raise ValueError("structured_outputs.whitespace_pattern is not supported by nbllm's grammar engine "
                         "(xgrammar); use disable_any_whitespace=True for compact JSON")
    if params.json is not None:
        problem = unsupported_schema_part(params.json)
        if problem:
            raise ValueError(f"structured_outputs.json: {problem} is not supported by nbllm's grammar engine "
                             f"(xgrammar would ignore it, so outputs could break the schema)")


def unsupported_schema_part(schema: Any) -> Optional[str]:
    """Where the schema uses a keyword xgrammar does not enforce ("#/properties/x: multipleOf"), else None."""
    for path, sub in iter_subschemas(schema):
        for keyword in IGNORED_KEYWORDS:
            if keyword in sub:
                return f"{path}: {keyword}"
        if sub.get("uniqueItems") is True:
            return f"{path}: uniqueItems"
        if "format" in sub and sub["format"] not in SUPPORTED_FORMATS:
            return f"{path}: format {sub['format']!r}"
        if ("pattern" in sub or "format" in sub) and ("minLength" in sub or "maxLength" in sub):
            return f"{path}: minLength/maxLength together with pattern or format"
    return None


def with_enforced_string_lengths(schema: Any) -> Any:
    """The schema with each length-bounded string written as a pattern of as many plain characters.

    xgrammar 0.2 compiles minLength/maxLength to a character class that lets raw control
    characters into the string (invalid JSON), and negated classes or "." to UTF-8 that
    admits overlong encodings (which decode to several U+FFFD, breaking maxLength).
    PLAIN_CHARACTER lists its code points explicitly, which xgrammar encodes exactly.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: with_enforced_string_lengths(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_ITEMS:
        value = out.get(key)
        if isinstance(value, list):
            out[key] = [with_enforced_string_lengths(sub) for sub in value]
        elif isinstance(value, dict):
            out[key] = with_enforced_string_lengths(value)
    bounded = {"minLength", "maxLength"} & out.keys()
    if out.get("type") == "string" and bounded and not {"pattern", "format"} & out.keys():
        low, high = out.pop("minLength", 0), out.pop("maxLength", "")
        out["pattern"] = f"^{PLAIN_CHARACTER}{{{low},{high}}}$"
    return out


def iter_subschemas(schema: Any, path: str = "#") -> Iterator[tuple[str, dict]]:
    """(JSON pointer, subschema) for the schema and every schema nested in it."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for key in _SCHEMA_MAPS:
        named = schema.get(key)
        for name, sub in named.items() if isinstance(named, dict) else ():
            yield from iter_subschemas(sub, f"{path}/{key}/{name}")
    for key in _SCHEMA_ITEMS:
        value = schema.get(key)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                yield from iter_subschemas(sub, f"{path}/{key}/{i}")
        else:
            yield from iter_subschemas(value, f"{path}/{key}")
