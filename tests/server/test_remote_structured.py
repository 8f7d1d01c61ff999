"""RemoteLLM's structured outputs: StructuredOutputsParams travels as vLLM's `structured_outputs` object, and
the live nbllm server holds the output to it (a choice from the set, JSON that validates against the schema)."""

import json
import re

import jsonschema
import pytest
from pydantic import BaseModel

from nbllm import SamplingParams, StructuredOutputsParams
from nbllm.client import RemoteLLM
from nbllm.client.wire import request_fields, vllm_only_fields

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 6},
                         "age": {"type": "integer", "minimum": 0, "maximum": 99},
                         "ok": {"type": "boolean"}},
          "required": ["name", "age", "ok"], "additionalProperties": False}
CHOICES = ["yes", "no", "not sure"]


class Person(BaseModel):
    name: str
    age: int


def _constrained(**constraint) -> SamplingParams:
    return SamplingParams(temperature=1.0, max_tokens=60, structured_outputs=StructuredOutputsParams(**constraint))


@pytest.mark.parametrize("constraint, field", [
    (dict(json=Person), {"json": Person.model_json_schema()}),
    (dict(json=json.dumps(SCHEMA), disable_any_whitespace=True), {"json": SCHEMA, "disable_any_whitespace": True}),
    (dict(regex="[a-c]{3}"), {"regex": "[a-c]{3}"}),
    (dict(choice=CHOICES), {"choice": CHOICES}),
    (dict(grammar='root ::= "a" | "b"'), {"grammar": 'root ::= "a" | "b"'}),
    (dict(json_object=True, whitespace_pattern=" ?"), {"json_object": True, "whitespace_pattern": " ?"}),
])
def test_the_constraint_becomes_vllms_request_field(constraint, field):
    for chat in (False, True):
        body = request_fields(_constrained(**constraint), chat=chat)
        assert body["structured_outputs"] == field
        assert json.loads(json.dumps(body))["structured_outputs"] == field
    assert "structured_outputs" in vllm_only_fields(body)
    assert "structured_outputs" not in request_fields(SamplingParams(), chat=False)


@pytest.fixture
def remote(server):
    with RemoteLLM(f"{server.url}/v1", max_concurrency=4) as llm:
        yield llm


def test_remote_choice_regex_and_schema(remote):
    prompts = ["Is it raining?", "Tell me", "Well"]
    for out in remote.generate(prompts, _constrained(choice=CHOICES), use_tqdm=False):
        assert out.outputs[0].text in CHOICES
    for out in remote.generate(prompts, _constrained(regex="[a-c]{3}"), use_tqdm=False):
        assert re.fullmatch("[a-c]{3}", out.outputs[0].text)
    for out in remote.generate(prompts, _constrained(json=SCHEMA, disable_any_whitespace=True), use_tqdm=False):
        jsonschema.validate(json.loads(out.outputs[0].text), SCHEMA)
    chat = remote.chat([{"role": "user", "content": "Who?"}], _constrained(json=SCHEMA, disable_any_whitespace=True),
                       use_tqdm=False)[0]
    jsonschema.validate(json.loads(chat.outputs[0].text), SCHEMA)


def test_remote_bad_constraint_fails_the_row_naming_the_field(remote):
    [out] = remote.generate("x", _constrained(regex="[unclosed"), use_tqdm=False)
    assert out.outputs[0].finish_reason == "error"
    assert "400" in out.outputs[0].stop_reason and "structured_outputs" in out.outputs[0].stop_reason
