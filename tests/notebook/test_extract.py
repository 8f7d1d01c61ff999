"""df.llm / s.llm with structured outputs: choice labels as categoricals, JSON schemas as typed columns.

The tiny random model writes whatever the grammar allows, so what is checked is the
frame: dtypes, categories, validation, missing values, and errors before submission.
"""

from __future__ import annotations

import enum
from typing import Optional

import jsonschema
import pandas as pd
import pytest
from nb_fakes import assert_engine_idle
from pydantic import BaseModel, Field

from nbllm import SamplingParams
from nbllm.notebook.structured import Extraction, column_dtype

SAMPLED = SamplingParams(temperature=1.0, max_tokens=200, seed=0)
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "happy": {"type": "boolean"},
        "mood": {"enum": ["up", "down"]},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 5}},
                    "required": ["city"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
    },
    "required": ["name", "age", "score", "happy", "mood", "address", "tags"],
}
DTYPES = {"name": "string", "age": "Int64", "score": "Float64", "happy": "boolean", "mood": "category",
          "address": "object", "tags": "object"}


@pytest.fixture
def reviews():
    return pd.DataFrame({"text": ["Great!", None, "Awful.", "Fine, I guess."]}, index=[7, 8, 9, 10])


def test_choice_gives_a_categorical_column(reviews, spy, tiny_llm):
    labelled = reviews.llm.generate("Review: {text}\nSentiment:", out="label", choice=["positive", "negative"],
                                    sampling_params=SamplingParams(temperature=1.0, max_tokens=8), llm=spy,
                                    use_tqdm=False)
    label = labelled["label"]
    assert isinstance(label.dtype, pd.CategoricalDtype) and list(label.cat.categories) == ["positive", "negative"]
    assert pd.isna(label[8]) and label.drop(8).notna().all()
    assert [p.structured_outputs.choice for _, _, p in spy.submitted] == [["positive", "negative"]] * 3
    series = reviews["text"].llm.generate("Review: {}\nSentiment:", choice=["positive", "negative"], llm=spy,
                                          sampling_params=SamplingParams(max_tokens=8), use_tqdm=False)
    assert series.dtype == label.dtype and list(series.index) == [7, 8, 9, 10] and series.name == "text"
    assert_engine_idle(tiny_llm)


def test_extract_gives_one_typed_validated_column_per_property(reviews, tiny_llm):
    before = reviews.copy()
    result = reviews.llm.extract("Facts about: {text}\nJSON:", SCHEMA, sampling_params=SAMPLED, llm=tiny_llm,
                                 use_tqdm=False)
    pd.testing.assert_frame_equal(reviews, before)
    assert list(result.columns) == ["text", *SCHEMA["properties"]]
    assert {name: str(result[name].dtype) for name in DTYPES} == DTYPES
    assert list(result["mood"].cat.categories) == ["up", "down"]
    assert result.loc[8, list(DTYPES)].isna().all(), "a missing prompt gives missing values"
    for index in (7, 9, 10):
        row = {name: result.loc[index, name] for name in DTYPES}
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        jsonschema.validate(row, SCHEMA)
        assert isinstance(row["address"], dict) and isinstance(row["tags"], list)
    assert_engine_idle(tiny_llm)


class Mood(str, enum.Enum):
    up = "up"
    down = "down"


class Place(BaseModel):
    city: str = Field(max_length=5)


class Fact(BaseModel):
    count: int = Field(ge=0, le=9)
    mood: Mood
    place: Place
    note: Optional[bool] = None


def test_extract_takes_a_pydantic_model_on_a_series(reviews, tiny_llm):
    facts = reviews["text"].llm.extract("Facts about: {}\nJSON:", Fact, sampling_params=SAMPLED, llm=tiny_llm,
                                        use_tqdm=False)
    assert list(facts.columns) == ["count", "mood", "place", "note"] and list(facts.index) == [7, 8, 9, 10]
    assert [str(facts[c].dtype) for c in facts.columns] == ["Int64", "category", "object", "boolean"]
    assert list(facts["mood"].cat.categories) == ["up", "down"]
    for index in (7, 9, 10):
        Fact.model_validate({c: facts.loc[index, c] for c in ("count", "mood", "place")} | {
            "note": None if pd.isna(facts.loc[index, "note"]) else bool(facts.loc[index, "note"])})
    assert facts.loc[8].isna().all()
    assert_engine_idle(tiny_llm)


def test_results_cut_short_are_missing_with_a_warning(reviews, tiny_llm):
    with pytest.warns(UserWarning, match=r"3 of 4 rows gave no valid JSON .*Raise max_tokens"):
        result = reviews.llm.extract("{text}", SCHEMA, sampling_params=SamplingParams(max_tokens=3), llm=tiny_llm,
                                     use_tqdm=False)
    assert result[list(DTYPES)].isna().all().all()
    assert_engine_idle(tiny_llm)


@pytest.mark.parametrize("schema, words", [
    ({"type": "array", "items": {"type": "integer"}}, "object schema with properties"),
    ({"type": "object"}, "object schema with properties"),
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": "zero"}}}, "not a valid JSON schema"),
])
def test_bad_schemas_raise_before_anything_is_submitted(reviews, spy, schema, words):
    with pytest.raises(ValueError, match=words):
        reviews.llm.extract("{text}", schema, llm=spy)
    assert spy.submitted == []


def test_column_types_follow_refs_optionals_and_enums():
    schema = Fact.model_json_schema()
    assert [str(column_dtype(s, schema)) for s in schema["properties"].values()] == [
        "Int64", "category", "object", "boolean"]
    assert column_dtype({"type": ["integer", "null"]}, {}) == "Int64"
    assert column_dtype({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {}) == "object"
    assert list(column_dtype({"const": "x"}, {}).categories) == ["x"]
    assert Extraction(SCHEMA).dtypes["age"] == "Int64"
