"""The token-probability view: one coloured token per generated token, alternatives in its title."""

import pytest
from html_tree import assert_self_contained, parse

from nbllm import CompletionOutput, Logprob, RequestOutput
from nbllm.views import TokenView, token_view, token_view_html
from nbllm.views.html_text import prob
from nbllm.views.token_view import HIGH, LOW, MID, probability_colour


def hand_made() -> CompletionOutput:
    texts = ["</span><script>x</script>", " a & b", "\n", "", '"q"']
    logprobs = [{i: Logprob(-0.1 * (i + 1), 1, text), 100 + i: Logprob(-3.0, 2, "<alt>")}
                for i, text in enumerate(texts)]
    return CompletionOutput(index=0, text="".join(texts), token_ids=list(range(len(texts))), cumulative_logprob=-1.5,
                            logprobs=logprobs)


def tokens(html):
    return parse(html).find_all("span", "title")


def test_one_span_per_token_with_alternatives(generated):
    completion = generated.outputs[0]
    spans = tokens(token_view_html(generated))
    assert len(spans) == len(completion.token_ids)
    for span, token_id, alternatives in zip(spans, completion.token_ids, completion.logprobs):
        chosen = alternatives[token_id]
        assert f"background:{probability_colour(prob(chosen.logprob))}" in span.attrs["style"]
        lines = span.attrs["title"].splitlines()
        assert f"p {prob(chosen.logprob):.4f}" in lines[0] and f"rank {chosen.rank}" in lines[0]
        assert len(lines) == 2 + len(alternatives)
        assert sum(line.startswith("▸") for line in lines) == 1


def test_prompt_and_completion_and_object(generated):
    view = token_view(generated)
    assert isinstance(view, TokenView) and view._repr_html_() == view.html
    doc = parse(view.html)
    assert "The capital of France is" in doc.find_all("span")[0].text()
    assert len(tokens(token_view_html(generated.outputs[0]))) == len(generated.outputs[0].token_ids)


def test_escaping_and_visible_whitespace():
    html = token_view_html(hand_made())
    assert_self_contained(html)
    spans = tokens(html)
    assert [s.text() for s in spans] == ["</span><script>x</script>", " a & b", "↵\n", "∅", '"q"']
    assert "'␣a␣&␣b'" in spans[1].attrs["title"] and "<alt>" in spans[0].attrs["title"]


def test_self_contained_and_unique_ids(generated):
    first, second = token_view_html(generated), token_view_html(generated)
    assert_self_contained(first)
    ids = [parse(h).find_all(attr="id")[0].attrs["id"] for h in (first, second)]
    assert ids[0] != ids[1] and all(i.startswith("nbllm-tokens-") for i in ids)


def test_every_completion_of_a_request():
    request = RequestOutput("r", "hi", [1], None, [hand_made(), hand_made()], finished=True)
    html = token_view_html(request)
    assert len(tokens(html)) == 10 and "completion 1" in html


def test_colour_scale():
    assert (probability_colour(0.0), probability_colour(0.5), probability_colour(1.0)) == (LOW, MID, HIGH)


def test_needs_logprobs():
    bare = CompletionOutput(index=0, text="x", token_ids=[1], cumulative_logprob=None, logprobs=None)
    with pytest.raises(ValueError, match="logprobs=5"):
        token_view_html(bare)
