"""%%generate --json / --choice / --regex: the cell's output constrained by StructuredOutputsParams on the tiny
model, and a UsageError naming the flag for two flags at once, an unknown variable or a bad schema."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from IPython.core.error import UsageError
from pydantic import BaseModel, Field

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 6},
                         "age": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "age"], "additionalProperties": False}


class Pet(BaseModel):
    kind: str = Field(pattern="^(cat|dog)$")
    legs: int = Field(ge=0, le=8)


def _run(ip, line: str, body: str = "Answer:"):
    ip.run_cell_magic("generate", f"--temperature 1.0 --max-tokens 120 --out result {line}", body)
    return ip.user_ns.pop("result")


def test_choice_gives_one_of_the_choices(ip):
    for seed in range(3):
        assert _run(ip, f"--seed {seed} --choice 'yes,no, not sure'") in ("yes", "no", "not sure")


def test_regex_gives_a_match(ip):
    # IPython expands {expression} in a magic's line, so a regex's braces are written doubled there.
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", _run(ip, "--regex '[0-9]{{3}}-[a-z]{{2}}'"))
    ip.user_ns["pattern"] = "(cat|dog)s?"
    assert re.fullmatch("(cat|dog)s?", _run(ip, "--regex $pattern"))


@pytest.mark.parametrize("schema, validate", [
    (SCHEMA, lambda value: jsonschema.validate(value, SCHEMA)),
    (json.dumps(SCHEMA), lambda value: jsonschema.validate(value, SCHEMA)),
    (Pet, Pet.model_validate),
])
def test_json_gives_json_that_validates(ip, schema, validate):
    ip.user_ns["schema"] = schema
    texts = _run(ip, "--seed 1 -n 2 --json schema", "A record:\n---\nAnother:")
    for text in [t for per_prompt in texts for t in per_prompt]:
        validate(json.loads(text))


def test_the_constraint_reaches_the_engine(ip, spy):
    ip.user_ns.update(engine=spy, schema=SCHEMA)
    ip.run_cell_magic("generate", "--llm engine --max-tokens 60 --json schema", "Hi")
    [(_, _, params)] = spy.submitted
    assert params.structured_outputs.json == SCHEMA and params.structured_outputs.kind == "json"


@pytest.mark.parametrize("line, words", [
    ("--choice a,b --regex 'x+'", "give one of --json, --choice and --regex, got --choice and --regex"),
    ("--json schema --choice a,b", "got --json and --choice"),
    ("--json no_such_variable", "'no_such_variable' is not a defined variable"),
    ("--json not_a_schema", "--json: structured_outputs.json must be a JSON schema object"),
    ("--json bad_text", "--json: structured_outputs.json is not valid JSON"),
    ("--json unsupported", "--json: structured_outputs.json: #: multipleOf is not supported"),
    ("--choice ,", "--choice: structured_outputs.choice must be a non-empty list"),
    ("--regex '[unclosed'", "--regex: structured_outputs.regex cannot be compiled"),
    ("--beams 2 --choice a,b", "--beams cannot be combined with --choice"),
])
def test_mistakes_are_usage_errors_naming_the_flag(ip, tiny_llm, line, words):
    ip.user_ns.update(schema=SCHEMA, not_a_schema=[1, 2], bad_text="{nope", unsupported={
        "type": "integer", "multipleOf": 3})
    with pytest.raises(UsageError, match=re.escape(words)):
        ip.run_cell_magic("generate", f"--max-tokens 5 {line}", "Hi")
