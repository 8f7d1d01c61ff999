"""ChatPanel through its traits: sending, streaming, stopping, editing the history, JSON, two panels."""

from __future__ import annotations

import json
import time

import pytest
from nb_fakes import FailingAfterFirstOutput, HeldEngine, SpyLLM, assert_engine_idle, wait_until

from nbllm import SamplingParams
from nbllm.notebook.chat import ChatPanel, ChatState

LONG = SamplingParams(temperature=0, max_tokens=3000, ignore_eos=True)  # seconds of work for long_llm
SHORT = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def reply_views(panel):
    return panel._log.children


def test_send_streams_the_reply_into_the_panel(slow):
    panel = ChatPanel(slow, sampling_params=SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    seen = []
    panel.send_message("Hello there")
    view = reply_views(panel)[-1]
    view.observe(lambda change: seen.append(change["new"]), names="value")
    assert panel.wait(10)
    assert len(set(seen)) >= 3, "the reply's view is updated while tokens arrive"
    messages = panel.messages
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[0]["content"] == "Hello there"
    assert messages[1]["content"] and "tokens/s" in panel.status.value and "30 tokens" in panel.status.value
    assert not panel.send_button.disabled and panel.stop_button.disabled
    assert_engine_idle(slow)


def test_enter_sends_and_shift_enter_keeps_typing(tiny_llm):
    panel = ChatPanel(tiny_llm, sampling_params=SHORT)
    panel.input.value = "first\nline"  # Shift+Enter: the browser adds the line break, nothing is sent
    assert panel.messages == []
    panel.input._handle_message(panel.input, {"type": "submit", "value": "first\nline"}, [])  # what Enter sends
    assert panel.wait(10)
    assert panel.messages[0] == {"role": "user", "content": "first\nline"} and panel.input.value == ""


def test_send_button_uses_the_input_and_controls(spy):
    panel = ChatPanel(spy, system_prompt="Be brief.")
    panel.temperature.value, panel.top_p.value, panel.max_tokens.value = 0.3, 0.8, 5
    panel.input.value = "Hi"
    panel.send_button.click()
    assert panel.wait(10)
    [messages] = spy.rendered
    [(_, prompt, params)] = spy.submitted
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert prompt == spy.llm.render_chat_prompts(messages)[0]
    assert (params.temperature, params.top_p, params.max_tokens) == (0.3, 0.8, 5)


def test_stop_aborts_and_frees_the_blocks_at_once(long_llm):
    panel = ChatPanel(long_llm, sampling_params=LONG)
    panel.send_message("Tell me a long story")
    assert wait_until(lambda: len(panel.messages[-1]["content"]) > 0)
    assert long_llm.get_stats().num_requests_running == 1
    panel.stop_button.click()
    assert_engine_idle(long_llm, timeout=0)
    assert panel.chat_state is ChatState.IDLE and "stopped" in panel.status.value
    reply = panel.messages[-1]
    assert reply["role"] == "assistant" and 0 < len(reply["content"])
    assert "stopped" in reply_views(panel)[-1].value


def test_stop_before_the_first_token(long_llm):
    panel = ChatPanel(long_llm, sampling_params=LONG)
    panel.send_message("Quick")
    panel.stop()
    assert_engine_idle(long_llm, timeout=0)
    assert panel.chat_state is ChatState.IDLE


def test_stop_before_the_first_token_aborts_at_once():
    """The request id comes from submit, so Stop aborts a request that has produced nothing yet."""
    engine = HeldEngine()
    panel = ChatPanel(engine, sampling_params=SHORT)
    panel.send_message("Hello")
    [request_id] = engine.streams
    started = time.monotonic()
    panel.stop()
    assert engine.aborted == [request_id] and time.monotonic() - started < 1.0
    assert panel.chat_state is ChatState.IDLE and "stopped" in panel.status.value
    assert panel.messages == [{"role": "user", "content": "Hello"}], "an empty reply is not kept"


def test_regenerate_undo_and_clear(spy):
    panel = ChatPanel(spy, sampling_params=SHORT)
    panel.send_message("One")
    panel.wait(10)
    first = panel.messages[-1]["content"]
    panel.regenerate_button.click()
    panel.wait(10)
    assert len(panel.messages) == 2 and panel.messages[-1]["content"] == first  # greedy: the same reply again
    assert len(spy.submitted) == 2 and spy.rendered[1] == [{"role": "user", "content": "One"}]
    panel.send_message("Two")
    panel.wait(10)
    panel.undo_button.click()
    assert [m["content"] for m in panel.messages] == ["One", first] and panel.input.value == "Two"
    panel.clear_button.click()
    assert panel.messages == [] and reply_views(panel) == ()


def test_undo_and_clear_stop_a_streaming_reply(long_llm):
    panel = ChatPanel(long_llm, sampling_params=LONG)
    panel.send_message("Long")
    assert wait_until(lambda: len(panel.messages[-1]["content"]) > 0)
    panel.undo()
    assert panel.messages == [] and panel.input.value == "Long"
    assert_engine_idle(long_llm)
    panel.send_message("Again")
    assert wait_until(lambda: len(panel.messages[-1]["content"]) > 0)
    panel.clear()
    assert panel.messages == [] and panel.chat_state is ChatState.IDLE
    assert_engine_idle(long_llm)


def test_regenerate_needs_a_message(tiny_llm):
    panel = ChatPanel(tiny_llm)
    panel.regenerate_button.click()
    assert "nothing to regenerate" in panel.status.value


def test_export_and_reload_continue_the_conversation(spy):
    panel = ChatPanel(spy, system_prompt="You are terse.", sampling_params=SHORT)
    panel.send_message("Hi")
    panel.wait(10)
    exported = panel.export_json()
    assert json.loads(exported) == panel.messages and panel.messages[0]["role"] == "system"
    other = ChatPanel(spy, sampling_params=SHORT)
    other.load_json(exported)
    assert other.messages == panel.messages and other.system_prompt.value == "You are terse."
    assert len(reply_views(other)) == 2
    other.send_message("More")
    other.wait(10)
    assert spy.rendered[-1] == panel.messages + [{"role": "user", "content": "More"}]


@pytest.mark.parametrize("text, message", [("{}", "JSON list"), ('[{"role": "robot", "content": "x"}]', "message 0"),
                                           ('[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]',
                                            "message 1")])
def test_load_json_rejects_bad_chats(tiny_llm, text, message):
    with pytest.raises(ValueError, match=message):
        ChatPanel(tiny_llm).load_json(text)


def test_two_panels_chat_at_once_in_one_batch(long_llm):
    panels = [ChatPanel(long_llm, sampling_params=SamplingParams(temperature=0, max_tokens=300, ignore_eos=True))
              for _ in range(2)]
    for i, panel in enumerate(panels):
        panel.send_message(f"Panel {i}")
    assert wait_until(lambda: long_llm.get_stats().num_requests_running == 2, timeout=5), "replies run together"
    assert all(panel.wait(30) for panel in panels)
    assert all(len(panel.messages) == 2 and "300 tokens" in panel.status.value for panel in panels)
    assert_engine_idle(long_llm)


def test_sending_while_streaming_is_refused_in_the_status_line(long_llm):
    panel = ChatPanel(long_llm, sampling_params=LONG)
    panel.send_message("Long")
    panel.input.submit("Another")  # Enter while the reply streams
    assert "press Stop first" in panel.status.value and panel.input.value == "Another"
    panel.stop()
    assert_engine_idle(long_llm)


class RejectingLLM(SpyLLM):
    """Rejects every request when it is submitted."""

    def submit(self, prompt, sampling_params=None, request_id=None, deliver=None):
        raise ValueError("prompt is too long")


@pytest.mark.parametrize("when", ["submit", "stream"])
def test_errors_show_in_the_panel(tiny_llm, when):
    engine = RejectingLLM(tiny_llm) if when == "submit" else \
        FailingAfterFirstOutput(tiny_llm, RuntimeError("the engine step failed"))
    panel = ChatPanel(engine, sampling_params=LONG)
    panel.input.value = "Hi"
    panel.send_button.click()
    assert panel.wait(10)
    assert "nbllm-error" in panel.status.value
    assert ("prompt is too long" if when == "submit" else "the engine step failed") in panel.status.value
    assert panel.chat_state is ChatState.IDLE
    assert_engine_idle(tiny_llm)
