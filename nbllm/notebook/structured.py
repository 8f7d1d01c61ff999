"""Typed DataFrame columns from constrained generation: choice labels and JSON-schema fields.

`with_choice` constrains a column's generation to a list of labels and `choice_column`
makes the labels a pandas categorical whose categories are the choices. `Extraction`
holds a JSON schema (a dict or a pydantic model class): the sampling parameters that
make the engine write JSON matching it, and `columns(texts, index)`, which parses and
validates each result (jsonschema, or the pydantic model) and spreads it into one typed
column per property: Int64, Float64, boolean, string, categorical for enums, object for
nested objects (dicts) and arrays (lists). A missing prompt gives missing values; so does
a result that does not parse or validate (it ran out of max_tokens, say), with a warning.
"""

from __future__ import annotations

import json
import warnings
from typing import Any, Optional, Sequence, Union

import pandas as pd

from nbllm.notebook.session import resolve_engine
from nbllm.protocol import EngineClient
from nbllm.sampling_params import SamplingParams, StructuredOutputsParams

EXTRACT_MAX_TOKENS = 256  # without sampling_params: room for a small object
_DTYPES = {"integer": "Int64", "number": "Float64", "boolean": "boolean", "string": "string"}


def _base_params(sampling_params: Optional[SamplingParams], llm: Optional[EngineClient],
                 max_tokens: Optional[int] = None) -> SamplingParams:
    if sampling_params is not None:
        return sampling_params
    defaults = resolve_engine(llm).get_default_sampling_params()
    if max_tokens is not None and defaults.max_tokens is not None and defaults.max_tokens < max_tokens:
        return defaults.updated(max_tokens=max_tokens)
    return defaults


# ----------------------------------------------------------------------------- choices
def with_choice(sampling_params: Optional[SamplingParams], choice: Sequence[str],
                llm: Optional[EngineClient]) -> SamplingParams:
    """The parameters (the engine's defaults if None) constrained to one of `choice`."""
    constraint = StructuredOutputsParams(choice=choice if isinstance(choice, str) else list(choice))
    return _base_params(sampling_params, llm).updated(structured_outputs=constraint)


def choice_column(values: Sequence[Optional[str]], choice: Sequence[str], index: pd.Index,
                  name: Optional[str] = None) -> pd.Series:
    """A categorical column of labels; an incomplete label (max_tokens too small) becomes missing, with a warning."""
    categories = list(dict.fromkeys(choice))
    incomplete = sum(1 for v in values if v is not None and v not in categories)
    if incomplete:
        warnings.warn(f"{incomplete} of {len(values)} rows did not finish a choice (raise max_tokens); "
                      f"they are missing", stacklevel=3)
    return pd.Series(pd.Categorical(values, categories=categories), index=index, name=name)


# ----------------------------------------------------------------------------- JSON extraction
class Extraction:
    """A JSON schema with properties, turned into typed columns."""

    def __init__(self, schema: Union[dict, type]):
        self.model = schema if isinstance(schema, type) else None
        self.schema: dict = StructuredOutputsParams(json=schema).json
        properties = self.schema.get("properties")
        if self.schema.get("type") != "object" or not isinstance(properties, dict) or not properties:
            raise ValueError("extract needs an object schema with properties, one column each; "
                             f"got {json.dumps(self.schema)[:200]}")
        if self.model is None:
            import jsonschema

            try:
                self._validator = jsonschema.validators.validator_for(self.schema)(self.schema)
                self._validator.check_schema(self.schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"the schema is not a valid JSON schema: {exc.message}") from None
        self.dtypes = {name: column_dtype(sub, self.schema) for name, sub in properties.items()}

    def sampling_params(self, sampling_params: Optional[SamplingParams],
                        llm: Optional[EngineClient]) -> SamplingParams:
        """The parameters (the engine's defaults, EXTRACT_MAX_TOKENS, if None) constrained to compact JSON."""
        constraint = StructuredOutputsParams(json=self.schema, disable_any_whitespace=True)
        return _base_params(sampling_params, llm, EXTRACT_MAX_TOKENS).updated(structured_outputs=constraint)

    def parse(self, text: str) -> dict:
        """The validated object; ValueError naming what is wrong."""
        if self.model is not None:
            from pydantic import ValidationError

            try:
                self.model.model_validate_json(text)
            except ValidationError as exc:
                raise ValueError(str(exc).splitlines()[0]) from None
            return json.loads(text)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg})") from None
        errors = sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            raise ValueError(errors[0].message)
        return value

    def columns(self, texts: Sequence[Optional[str]], index: pd.Index) -> dict[str, pd.Series]:
        """One typed column per property; rows without a text or a valid result are missing."""
        objects: list[Optional[dict]] = []
        problems: list[str] = []
        for text in texts:
            if text is None:
                objects.append(None)
                continue
            try:
                objects.append(self.parse(text))
            except ValueError as exc:
                objects.append(None)
                problems.append(str(exc))
        if problems:
            warnings.warn(f"{len(problems)} of {len(texts)} rows gave no valid JSON for the schema (first: "
                          f"{problems[0]}); their columns are missing. Raise max_tokens if outputs were cut.",
                          stacklevel=3)
        return {name: typed_column([o.get(name) if o is not None else None for o in objects], dtype, index, name)
                for name, dtype in self.dtypes.items()}


def typed_column(values: list[Any], dtype: Union[str, pd.CategoricalDtype], index: pd.Index, name: str) -> pd.Series:
    """The values as a column of `dtype`; as objects, with a warning, when they do not fit it (a huge integer)."""
    if isinstance(dtype, pd.CategoricalDtype):
        return pd.Series(pd.Categorical(values, dtype=dtype), index=index, name=name)
    try:
        return pd.Series(values, index=index, name=name, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        warnings.warn(f"column {name!r} kept as objects: its values do not fit {dtype} ({exc})", stacklevel=4)
        return pd.Series(values, index=index, name=name, dtype=object)


def column_dtype(schema: Any, root: dict) -> Union[str, pd.CategoricalDtype]:
    """The pandas dtype for values of this (sub)schema; "object" when no single scalar type fits."""
    schema = resolve(schema, root)
    if not isinstance(schema, dict):
        return "object"
    if "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        return pd.CategoricalDtype([v for v in values if v is not None])
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    return _DTYPES.get(kind, "object")


def resolve(schema: Any, root: dict) -> Any:
    """Follow local $refs and unwrap an optional (anyOf/oneOf with null) or a one-element allOf."""
    for _ in range(32):  # bounded: a self-referencing schema ends as "object"
        if not isinstance(schema, dict):
            return schema
        if isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/"):
            target: Any = root
            for part in schema["$ref"][2:].split("/"):
                target = target.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, dict) else {}
            schema = target
            continue
        for key in ("anyOf", "oneOf", "allOf"):
            options = [s for s in schema.get(key) or [] if not (isinstance(s, dict) and s.get("type") == "null")]
            if len(options) == 1:
                schema = options[0]
                break
        else:
            return schema
    return None
