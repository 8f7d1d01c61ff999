"""Structured outputs: JSON schemas, choices, regexes and grammars constrain decoding (xgrammar).

The tiny random model samples nearly uniformly among what the grammar allows, so every
sample that parses and validates is the grammar's doing, not the model's. The test marked
slow asks the real default model for sentiment labels.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch
from engine_testing import wait_idle

from nbllm import LLM, GuidedDecodingParams, SamplingParams, StructuredOutputsParams
from nbllm import sampling_params as sampling_params_module
from nbllm.engine.grammar import GrammarCompiler, SequenceGrammar, unsupported_schema_part
from nbllm.layers.grammar_mask import apply_grammars
from nbllm.sampling_params import RequestOutputKind

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["happy", "sad", "meh"]},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 6},
                           "zip": {"type": "string", "pattern": "[0-9]{5}"}},
            "required": ["city", "zip"],
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 1, "maxItems": 3},
        "verified": {"type": "boolean"},
    },
    "required": ["name", "age", "mood", "address", "tags", "verified"],
    "additionalProperties": False,
}
CHOICES = ["positive", "negative", "not sure"]


def constrained(max_tokens: int = 200, **constraint) -> SamplingParams:
    return SamplingParams(temperature=1.0, max_tokens=max_tokens, structured_outputs=StructuredOutputsParams(
        **constraint))


# ----------------------------------------------------------------------------- the parameters
def test_params_are_vllms_and_take_a_schema_in_three_forms():
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    from_model = StructuredOutputsParams(json=Person)
    assert from_model.json == Person.model_json_schema() and from_model.kind == "json"
    assert StructuredOutputsParams(json='{"type": "object"}').json == {"type": "object"}
    assert sampling_params_module.StructuredOutputsParams is StructuredOutputsParams
    older = SamplingParams(guided_decoding=GuidedDecodingParams(choice=["a", "b"]))
    assert older.structured_outputs.choice == ["a", "b"] and older.guided_decoding is None
    assert older.updated(n=2).structured_outputs == older.structured_outputs


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(), ValueError, "exactly one constraint"),
    (dict(json={"type": "object"}, regex="a+"), ValueError, "got json and regex"),
    (dict(choice=["a"], grammar='root ::= "a"'), ValueError, "got choice and grammar"),
    (dict(json="{not json"), ValueError, "not valid JSON"),
    (dict(json=[1, 2]), TypeError, "JSON schema object"),
    (dict(json=int), TypeError, "pydantic model"),
    (dict(choice=[]), ValueError, "non-empty list"),
    (dict(choice="yes"), TypeError, "list of str"),
    (dict(regex=5), TypeError, "regex must be a str"),
    (dict(json_object="yes"), TypeError, "json_object"),
])
def test_bad_params_name_the_problem(kwargs, error, words):
    with pytest.raises(error, match=words):
        StructuredOutputsParams(**kwargs)


def test_structured_outputs_and_guided_decoding_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        SamplingParams(structured_outputs=StructuredOutputsParams(regex="a"),
                       guided_decoding=GuidedDecodingParams(regex="b"))
    with pytest.raises(TypeError, match="StructuredOutputsParams"):
        SamplingParams(structured_outputs={"regex": "a"})


# ----------------------------------------------------------------------------- compile errors
@pytest.mark.parametrize("constraint, words", [
    (dict(json={"type": "foo"}), "Unsupported type"),
    (dict(json={"type": "integer", "minimum": 5, "maximum": 1}), "minimum greater than maximum"),
    (dict(json={"type": "integer", "multipleOf": 3}), "multipleOf"),
    (dict(json={"type": "object", "properties": {"a": {"type": "string", "format": "phone"}}}), "format 'phone'"),
    (dict(regex="(ab"), "parenthesis is not closed"),
    (dict(grammar='root ::= "a" | '), "EBNF parser error"),
    (dict(grammar='start ::= "a"'), "root rule"),
    (dict(json_object=True, whitespace_pattern=r"[ ]?"), "whitespace_pattern"),
])
def test_bad_constraints_raise_before_anything_is_scheduled(tiny_llm, constraint, words):
    with pytest.raises(ValueError, match=words):
        tiny_llm.generate("Hello", constrained(**constraint), use_tqdm=False)
    assert tiny_llm.get_stats().num_requests_waiting == 0
    wait_idle(tiny_llm)


def test_unsupported_keywords_are_found_where_they_are_nested():
    schema = {"type": "object", "properties": {"not": {"type": "array", "items": {"type": "number",
                                                                                  "multipleOf": 2}}}}
    assert unsupported_schema_part(schema) == "#/properties/not/items: multipleOf"
    assert unsupported_schema_part(SCHEMA) is None


def test_each_distinct_constraint_compiles_once_and_the_cache_is_bounded(tiny_llama_path):
    from transformers import AutoTokenizer

    compiler = GrammarCompiler(AutoTokenizer.from_pretrained(str(tiny_llama_path)), 320, {0}, cache_size=2)
    first = compiler.compile(StructuredOutputsParams(choice=["a", "b"]))
    assert compiler.compile(StructuredOutputsParams(choice=["a", "b"])) is first
    compiler.compile(StructuredOutputsParams(regex="x+"))
    compiler.compile(StructuredOutputsParams(regex="y+"))  # evicts the least recently used: the choice
    assert compiler.num_compiled == 3
    compiler.compile(StructuredOutputsParams(choice=["a", "b"]))
    assert compiler.num_compiled == 4


# ----------------------------------------------------------------------------- what comes out
@pytest.mark.timeout(300)
def test_twenty_samples_of_a_nested_schema_all_parse_and_validate(tiny_llm):
    params = constrained(json=SCHEMA, disable_any_whitespace=True).updated(n=20, seed=0, max_tokens=220)
    [out] = tiny_llm.generate("Describe a person:", params, use_tqdm=False)
    assert len(out.outputs) == 20
    for completion in out.outputs:
        jsonschema.validate(json.loads(completion.text), SCHEMA)
        assert completion.finish_reason == "stop"
    assert len({c.text for c in out.outputs}) > 10, "the samples differ"
    wait_idle(tiny_llm)


def test_choices_and_regexes_always_match_in_full(tiny_llm):
    choice, regex = tiny_llm.generate(["Label:", "Code:"], [
        constrained(choice=CHOICES).updated(n=20), constrained(regex=r"\d{3}-[a-z]{2,5}").updated(n=20)],
        use_tqdm=False)
    assert {c.text for c in choice.outputs} <= set(CHOICES)
    assert all(re.fullmatch(r"\d{3}-[a-z]{2,5}", c.text) for c in regex.outputs), [c.text for c in regex.outputs]
    assert {c.finish_reason for c in choice.outputs + regex.outputs} == {"stop"}
    wait_idle(tiny_llm)


def test_pydantic_models_and_grammars(tiny_llm):
    from pydantic import BaseModel, Field

    class Point(BaseModel):
        x: int = Field(ge=-9, le=9)
        y: int = Field(ge=-9, le=9)

    outs = tiny_llm.generate(["A", "B", "C"], [
        constrained(json=Point, disable_any_whitespace=True),
        constrained(grammar='root ::= "(" [0-9] "," [0-9] ")"'),
        constrained(grammar='start: "yes" | "no"'),  # Lark
    ], use_tqdm=False)
    texts = [o.outputs[0].text for o in outs]
    assert [o.outputs[0].finish_reason for o in outs] == ["stop"] * 3, texts
    Point.model_validate_json(texts[0])
    assert re.fullmatch(r"\([0-9],[0-9]\)", texts[1]) and texts[2] in ("yes", "no")
    wait_idle(tiny_llm)


def test_json_object_allows_any_object_and_nothing_else(tiny_llama_path):
    """(The random model rarely closes an unbounded object, so the matcher is driven directly.)"""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_path))
    grammar = GrammarCompiler(tokenizer, len(tokenizer), {0}).compile(StructuredOutputsParams(json_object=True))

    def accepts(text: str) -> bool:
        matcher = SequenceGrammar(grammar, [0])
        return all(matcher.accept(t) for t in tokenizer.encode(text) + [0]) and matcher.is_terminated

    assert accepts('{"a": [1, {"b": null}], "c": "d"}') and accepts("{}")
    assert not accepts("[1, 2]") and not accepts('"text"') and not accepts('{"a": 1')


def test_a_constrained_batch_mate_leaves_greedy_tokens_alone(tiny_llm):
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    [alone] = tiny_llm.generate("Once upon a time", greedy, use_tqdm=False)
    together = tiny_llm.generate(["Once upon a time", "Describe a person:", "Label:"], [
        greedy, constrained(json=SCHEMA, disable_any_whitespace=True), constrained(choice=CHOICES)],
        use_tqdm=False)
    assert together[0].outputs[0].token_ids == alone.outputs[0].token_ids
    assert together[2].outputs[0].text in CHOICES
    wait_idle(tiny_llm)


def test_a_regex_longer_than_max_tokens_ends_with_length(tiny_llm):
    [out] = tiny_llm.generate("Hello", constrained(regex="a{200}", max_tokens=6), use_tqdm=False)
    completion = out.outputs[0]
    assert completion.finish_reason == "length" and len(completion.token_ids) == 6
    assert re.fullmatch("a+", completion.text)
    wait_idle(tiny_llm)


def test_a_completed_grammar_stops_even_with_ignore_eos_or_min_tokens(tiny_llm):
    """The grammar decides where the output ends: neither ignore_eos nor min_tokens holds it open."""
    outs = tiny_llm.generate(["A", "B"], [constrained(choice=CHOICES).updated(ignore_eos=True),
                                          constrained(choice=CHOICES).updated(min_tokens=30)], use_tqdm=False)
    for out in outs:
        assert out.outputs[0].finish_reason == "stop" and out.outputs[0].text in CHOICES
    wait_idle(tiny_llm)


def test_streaming_and_stop_strings(tiny_llm):
    params = constrained(choice=["alpha beta gamma", "delta"]).updated(seed=3, output_kind=RequestOutputKind.DELTA)
    deltas = list(tiny_llm.stream("Pick:", params))
    [final] = tiny_llm.generate("Pick:", params.updated(output_kind=RequestOutputKind.CUMULATIVE), use_tqdm=False)
    assert "".join(d.outputs[0].text for d in deltas) == final.outputs[0].text
    stop = constrained(choice=["alpha beta gamma"]).updated(stop=[" beta"])
    stopped = tiny_llm.generate("Pick:", stop, use_tqdm=False)
    assert stopped[0].outputs[0].text == "alpha" and stopped[0].outputs[0].finish_reason == "stop"
    wait_idle(tiny_llm)


def test_prefix_caching_serves_constrained_requests(tiny_llm):
    prompt = "The capital of France is Paris. The capital of Italy is Rome. Label this text:"
    first, second = (tiny_llm.generate(prompt, constrained(choice=CHOICES), use_tqdm=False)[0] for _ in range(2))
    assert second.num_cached_tokens > 0
    assert first.outputs[0].text in CHOICES and second.outputs[0].text in CHOICES
    wait_idle(tiny_llm)


@pytest.mark.timeout(300)
def test_preempted_sequences_keep_their_grammar_state(tiny_llama_path):
    """Seeded samples are the same in a roomy pool and in one so small that sequences are preempted:
    a recomputed sequence neither refeeds its matcher nor loses its place."""
    params = constrained(json=SCHEMA, disable_any_whitespace=True).updated(n=2, seed=7, max_tokens=200)
    prompts = ["Describe a person:", "Describe another person:"]
    with LLM(str(tiny_llama_path), block_size=8, num_kv_blocks=256) as llm:
        roomy = llm.generate(prompts, params, use_tqdm=False)
    with LLM(str(tiny_llama_path), block_size=8, num_kv_blocks=28) as llm:
        tight = llm.generate(prompts, params, use_tqdm=False)
        assert llm.get_stats().num_preemptions > 0
        wait_idle(llm)
    for a, b in zip(roomy, tight):
        assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
        for completion in b.outputs:
            jsonschema.validate(json.loads(completion.text), SCHEMA)


# ----------------------------------------------------------------------------- the mask itself
class AllowOnly:
    """A stand-in grammar that allows a fixed set of tokens."""

    def __init__(self, allowed: set[int]):
        self.allowed = allowed

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        bits = torch.zeros(bitmask.shape[1] * 32, dtype=torch.int64)
        bits[list(self.allowed)] = 1
        words = (bits.view(-1, 32) << torch.arange(32)).sum(dim=1)  # as unsigned 32-bit words
        bitmask[row] = torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def test_grammar_masks_apply_to_constrained_rows_only():
    vocab = 70  # not a multiple of 32
    logits = torch.randn(3, vocab)
    expected_row0 = logits[0].clone()
    masked = apply_grammars(logits, [None, AllowOnly({0, 31, 32, 69}), AllowOnly({5})])
    assert torch.equal(masked[0], expected_row0)
    assert torch.isfinite(masked[1]).nonzero().flatten().tolist() == [0, 31, 32, 69]
    assert torch.isfinite(masked[2]).nonzero().flatten().tolist() == [5]


def test_constraints_that_leave_the_grammar_nothing_fail_that_request_alone(tiny_llm):
    tokenizer = tiny_llm.get_tokenizer()
    conflict = constrained(choice=["yes"]).updated(allowed_token_ids=tokenizer.encode("no"))
    with pytest.raises(RuntimeError, match="breaks the request's grammar"):
        tiny_llm.generate(["A", "B"], [conflict, constrained(choice=CHOICES)], use_tqdm=False)
    wait_idle(tiny_llm)
    assert tiny_llm.generate("C", constrained(choice=CHOICES), use_tqdm=False)[0].outputs[0].text in CHOICES


# ----------------------------------------------------------------------------- the real model
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_default_model_labels_sentiment_with_a_choice():
    reviews = ["I loved this film, the acting was wonderful.", "Terrible service, I will never come back.",
               "Absolutely fantastic, highly recommended!", "The worst purchase I have ever made."]
    few_shot = ("Review: The battery died after two days.\nSentiment: negative\n\n"
                "Review: Comfortable, light and it looks great.\nSentiment: positive\n\n"
                "Review: {}\nSentiment: ")
    params = SamplingParams(temperature=0, max_tokens=8, structured_outputs=StructuredOutputsParams(
        choice=["positive", "negative"]))
    with LLM() as llm:
        outputs = llm.generate([few_shot.format(review) for review in reviews], params, use_tqdm=False)
    assert [o.outputs[0].text for o in outputs] == ["positive", "negative", "positive", "negative"]
    assert {o.outputs[0].finish_reason for o in outputs} == {"stop"}
