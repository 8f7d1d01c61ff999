"""%%generate's footer counts tokens, or characters where the engine sends no token ids (capabilities)."""

from __future__ import annotations

from nbllm.notebook.generate_cell import PromptProgress
from nbllm.outputs import CompletionOutput, RequestOutput
from nbllm.views.generate_view import footer_line


def output(text: str, token_ids: list[int], finished: bool) -> RequestOutput:
    completion = CompletionOutput(0, text, token_ids, None, None, "length" if finished else None)
    return RequestOutput("r", "Hi", [1], None, [completion], finished)


def test_tokens_and_rate_when_token_ids_come():
    progress = PromptProgress(started=10.0, completions=1)
    progress.take(output(" Paris", [5], False), 10.1)
    progress.take(output(" Paris is", [5, 6], True), 10.5)
    summary = progress.summary()
    assert (summary.tokens, summary.characters) == (2, 9)
    assert footer_line(summary) == "length · 2 tokens in 0.5 s · 4.0 tokens/s · TTFT 0.10 s"


def test_characters_not_a_wrong_zero_when_no_token_ids_come():
    """A server such as llama.cpp's streams text and no token ids: 0 tokens would be false."""
    progress = PromptProgress(started=10.0, completions=1, counts_tokens=False)
    progress.take(output(" Paris", [], False), 10.2)
    progress.take(output(" Paris is", [], True), 10.5)
    summary = progress.summary()
    assert summary.tokens is None
    assert footer_line(summary) == "length · 9 characters in 0.5 s (the server sends no token ids) · TTFT 0.20 s"


def test_an_empty_completion_is_zero_tokens():
    progress = PromptProgress(started=10.0, completions=1)
    progress.take(output("", [], True), 10.5)
    assert progress.summary().tokens == 0 and "0 tokens" in footer_line(progress.summary())
