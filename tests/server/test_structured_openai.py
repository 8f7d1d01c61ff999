"""Structured outputs through the official `openai` client: response_format (json_object, json_schema) on chat
and completions, vLLM's structured_outputs and older guided_* fields through extra_body, and 400s naming the
field for constraints the server cannot take."""

import json
import re

import jsonschema
import pytest

from http_testing import MODEL

openai = pytest.importorskip("openai")
MESSAGES = [{"role": "user", "content": "Describe a person"}]
PROMPT = "A person:"
SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 6},
                         "age": {"type": "integer", "minimum": 0, "maximum": 99},
                         "mood": {"enum": ["happy", "sad"]}},
          "required": ["name", "age", "mood"], "additionalProperties": False}
CHOICES = ["yes", "no", "not sure"]
SAMPLED = dict(model=MODEL, temperature=1.0, max_tokens=80, seed=3)


def _chat(client, **kwargs) -> str:
    return client.chat.completions.create(messages=MESSAGES, **{**SAMPLED, **kwargs}).choices[0].message.content


def _completion(client, response_format=None, extra_body=None, **kwargs) -> str:
    # The openai client's completions.create has no response_format argument; vLLM's server reads it from the body.
    extra_body = {**({"response_format": response_format} if response_format else {}), **(extra_body or {})}
    return client.completions.create(prompt=PROMPT, extra_body=extra_body, **{**SAMPLED, **kwargs}).choices[0].text


def _valid(text: str) -> bool:
    jsonschema.validate(json.loads(text), SCHEMA)
    return True


def _compact(**body):
    """disable_any_whitespace keeps the tiny random model from wandering in whitespace until max_tokens."""
    return {"structured_outputs": {**body, "disable_any_whitespace": True}}


@pytest.mark.parametrize("ask", [_chat, _completion])
def test_response_format_json_schema(openai_client, ask):
    # No disable_any_whitespace in OpenAI's field: room for the whitespace a random model samples between tokens.
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    assert _valid(ask(openai_client, response_format=response_format, max_tokens=200))


@pytest.mark.parametrize("ask", [_chat, _completion])
def test_response_format_json_object(openai_client, ask):
    # Any JSON object: the tiny model may not close it within max_tokens, so check the prefix the grammar allows.
    response = openai_client.chat.completions.create(messages=MESSAGES, response_format={"type": "json_object"},
                                                     **SAMPLED) if ask is _chat else \
        openai_client.completions.create(prompt=PROMPT, extra_body={"response_format": {"type": "json_object"}},
                                         **SAMPLED)
    choice = response.choices[0]
    text = choice.message.content if ask is _chat else choice.text
    assert text.lstrip().startswith("{")
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("ask", [_chat, _completion])
@pytest.mark.parametrize("extra, check", [
    (_compact(json=SCHEMA), _valid),
    ({"structured_outputs": {"choice": CHOICES}}, lambda text: text in CHOICES),
    ({"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}}, lambda text: re.fullmatch("[0-9]{3}-[a-z]{2}", text)),
    ({"structured_outputs": {"grammar": 'root ::= "red" | "green"'}}, lambda text: text in ("red", "green")),
    ({"guided_json": SCHEMA, "guided_whitespace_pattern": None},
     lambda text: text.lstrip().startswith("{")),
    ({"guided_json": json.dumps({"type": "boolean"})}, lambda text: json.loads(text) in (True, False)),
    ({"guided_regex": "[xy]{4}"}, lambda text: re.fullmatch("[xy]{4}", text)),
    ({"guided_choice": CHOICES}, lambda text: text in CHOICES),
    ({"guided_grammar": 'root ::= "up" | "down"'}, lambda text: text in ("up", "down")),
])
def test_vllm_fields_through_extra_body(openai_client, ask, extra, check):
    text = ask(openai_client, extra_body=extra)
    assert check(text), text


@pytest.mark.parametrize("kwargs, param", [
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), "response_format"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "integer", "multipleOf": 3}}}), "response_format"),
    (dict(extra_body={"structured_outputs": {"json": "{not json"}}), "structured_outputs"),
    (dict(extra_body={"structured_outputs": {"regex": "[unclosed"}}), "structured_outputs"),
    (dict(extra_body={"structured_outputs": {"choice": []}}), "structured_outputs"),
    (dict(extra_body={"structured_outputs": {"choice": ["a"], "regex": "a"}}), "structured_outputs"),
    (dict(extra_body={"guided_json": "{not json"}), "guided_json"),
    (dict(extra_body={"guided_grammar": "root ::= "}), "guided_grammar"),
    (dict(extra_body={"guided_choice": ["a"], "guided_regex": "a"}), "guided_choice"),
    (dict(response_format={"type": "json_object"}, extra_body={"guided_choice": ["a"]}), "guided_choice"),
])
@pytest.mark.parametrize("ask", [_chat, _completion])
def test_bad_constraints_are_400s_naming_the_field(openai_client, ask, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        ask(openai_client, **kwargs)
    assert info.value.body["param"] == param, info.value.body
