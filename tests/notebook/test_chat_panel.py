"""ChatPanel through its traits: sending, streaming, stopping, failed turns, editing the history, JSON,
two panels, the message box's protocol with the browser, and the sampling defaults."""

from __future__ import annotations

import json
import time

import pytest
from nb_fakes import FailingAfterFirstOutput, HeldEngine, SpyLLM, assert_engine_idle, wait_until

import ipywidgets as widgets

from nbllm import SamplingParams
from nbllm.errors import InvalidParameter
from nbllm.notebook.chat import ChatPanel, ChatState
from nbllm.notebook.chat_defaults import CHAT_DEFAULTS, CHAT_MAX_TOKENS

LONG = SamplingParams(temperature=0, max_tokens=3000, ignore_eos=True)  # seconds of work for long_llm
SHORT = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def shown(panel) -> list[str]:
    """The log's bubbles as the browser gets them: finished messages, then the one streaming."""
    return panel.chat_log.messages + ([panel.chat_log.live] if panel.chat_log.live else [])


def enter(panel, text: str) -> list[dict]:
    """What pressing Enter in the browser sends (the browser has cleared the box); returns what the kernel sent back."""
    sent = []
    panel.input.send = sent.append
    panel.input._handle_message(panel.input, {"type": "submit", "value": text, "cleared": True}, [])
    return sent


def test_send_streams_the_reply_into_the_panel(slow):
    panel = ChatPanel(slow, sampling_params=SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    seen = []
    panel.chat_log.observe(lambda change: seen.append(change["new"]), names="live")
    panel.send_message("Hello there")
    assert panel.wait(10)
    assert len(set(seen)) >= 4, "the streaming reply is updated while tokens arrive"
    assert seen[-1] == "" and len(panel.chat_log.messages) == 2, "then it is a finished message"
    messages = panel.messages
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[0]["content"] == "Hello there"
    assert messages[1]["content"] and "tokens/s" in panel.status.value and "30 tokens" in panel.status.value
    assert not panel.input.busy and panel.stop_button.disabled
    assert_engine_idle(slow)


def test_enter_sends_and_shift_enter_keeps_typing(tiny_llm):
    panel = ChatPanel(tiny_llm, sampling_params=SHORT)
    panel.input.value = "first\nline"  # Shift+Enter: the browser adds the line break, nothing is sent
    assert panel.messages == []
    panel.input.value = ""  # Enter: the browser clears the box first, then sends the text
    assert enter(panel, "first\nline") == [], "nothing comes back to the browser"
    assert panel.wait(10)
    assert panel.messages[0] == {"role": "user", "content": "first\nline"} and panel.input.value == ""


def test_a_late_value_update_does_not_bring_sent_text_back(tiny_llm):
    """The kernel never writes the box's value while handling Enter: an update the browser held back
    arrives later and carries "" (the browser cleared its value before sending)."""
    panel = ChatPanel(tiny_llm, sampling_params=SHORT)
    panel.input.value = "Hel"  # the last value update that got through before Enter
    writes = []
    panel.input.observe(lambda change: writes.append(change["new"]), names="value")
    enter(panel, "Hello")
    assert writes == [] and panel.wait(10)
    panel.input.value = ""  # the held-back update, flushed after the submit
    assert panel.messages[0]["content"] == "Hello" and panel.input.value == ""


def test_send_message_uses_the_input_and_controls(spy):
    panel = ChatPanel(spy, system_prompt="Be brief.")
    panel.temperature.value, panel.top_p.value, panel.max_tokens.value = 0.3, 0.8, 5
    panel.input.value = "Hi"
    panel.send_message()
    assert panel.input.value == "" and panel.wait(10)
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
    assert "stopped" in shown(panel)[-1] and panel.chat_log.live == ""


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
    assert panel.messages == [] and shown(panel) == []


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
    assert len(shown(other)) == 2
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


def test_sending_while_streaming_is_refused_and_the_text_goes_back(long_llm):
    panel = ChatPanel(long_llm, sampling_params=LONG)
    panel.send_message("Long")
    assert panel.input.busy, "the browser keeps text in the box while busy"
    sent = enter(panel, "Another")  # a browser that had not yet heard it is busy cleared its box
    assert "press Stop first" in panel.status.value
    assert sent == [{"type": "restore", "value": "Another"}], "the text goes back into the box"
    panel.stop()
    assert_engine_idle(long_llm)
    assert not panel.input.busy


class RejectingOnce(SpyLLM):
    """Rejects the first request it is given, as the engine rejects a prompt over the context window."""

    def submit(self, prompt, sampling_params=None, request_id=None, deliver=None):
        if not any(event[0] == "rejected" for event in self.events):
            self.events.append(("rejected", prompt))
            raise InvalidParameter("The prompt is 9128 tokens long, but this model's maximum context length is "
                                   "8192 tokens; shorten the prompt", "prompt")
        return super().submit(prompt, sampling_params, request_id, deliver)


def test_an_over_long_message_fails_alone_and_the_next_one_works(spy):
    panel = ChatPanel(RejectingOnce(spy.llm), sampling_params=SHORT)
    engine = panel.llm
    enter(panel, "a very long message")
    assert panel.chat_state is ChatState.IDLE and not panel.input.busy
    status = panel.status.value
    assert "nbllm-error" in status and "9128 tokens" in status and "Undo puts it back" in status, status
    assert panel.messages == [], "the failed message is not part of the conversation"
    [bubble] = shown(panel)
    assert "nbllm-failed" in bubble and "not sent" in bubble and "a very long message" in bubble
    enter(panel, "Hi")
    assert panel.wait(10)
    assert engine.rendered[-1] == [{"role": "user", "content": "Hi"}], "the failed message is not resent"
    assert [m["content"] for m in panel.messages][0] == "Hi" and "tokens/s" in panel.status.value
    assert "nbllm-error" not in panel.status.value, "the status line moved on"
    assert len(shown(panel)) == 3 and "nbllm-failed" in shown(panel)[0]
    assert_engine_idle(spy.llm)


def test_a_prompt_over_the_real_context_window_fails_then_the_panel_recovers(tiny_llm):
    panel = ChatPanel(tiny_llm, sampling_params=SHORT)
    enter(panel, "word " * 400)  # the tiny model's window is 256 tokens
    assert "maximum context length" in panel.status.value and panel.messages == []
    enter(panel, "Hello")
    assert panel.wait(10) and [m["role"] for m in panel.messages] == ["user", "assistant"]
    assert "done" in panel.status.value or "max tokens" in panel.status.value
    assert_engine_idle(tiny_llm)


def test_undo_twice_after_a_failed_message_keeps_what_is_typed(spy):
    panel = ChatPanel(RejectingOnce(spy.llm), sampling_params=SHORT)
    panel.send_message("One")  # rejected: marked failed
    panel.undo()
    assert shown(panel) == [] and panel.input.value == "One", "Undo puts the failed message back to be edited"
    panel.input.value = ""
    panel.send_message("Two")
    panel.wait(10)
    panel.input.value = "a draft"
    panel.undo()
    assert panel.messages == [] and panel.input.value == "a draft", "a text being typed is never thrown away"
    assert "kept" in panel.status.value
    panel.undo()
    assert "nothing to undo" in panel.status.value


def test_a_reply_that_fails_while_streaming_marks_its_exchange_failed(tiny_llm):
    engine = FailingAfterFirstOutput(tiny_llm, RuntimeError("the engine step failed"))
    panel = ChatPanel(engine, sampling_params=LONG)
    panel.send_message("Hi")
    assert panel.wait(10)
    assert "nbllm-error" in panel.status.value and "the engine step failed" in panel.status.value
    assert "Regenerate tries it again" in panel.status.value
    assert panel.messages == [] and all("nbllm-failed" in b for b in shown(panel))
    assert panel.chat_state is ChatState.IDLE
    assert_engine_idle(tiny_llm)
    panel.max_tokens.value = 4
    panel.regenerate()  # the engine fails only its first request: the retry works
    assert panel.wait(10) and [m["role"] for m in panel.messages] == ["user", "assistant"]
    assert_engine_idle(tiny_llm)


def test_controls_and_log(tiny_llm):
    panel = ChatPanel(tiny_llm)
    assert isinstance(panel.max_tokens, widgets.BoundedIntText), "a number box, not a 1..8192 slider"
    assert (panel.max_tokens.min, panel.max_tokens.max) == (1, tiny_llm.max_model_len)
    assert panel.chat_log.max_height == "480px" and ChatPanel(tiny_llm, max_height="300px").chat_log.max_height == "300px"
    assert "nbllm-panel" in panel._dom_classes


def test_markdown_tables_and_code_reach_the_log(tiny_llm):
    panel = ChatPanel(tiny_llm)
    panel.load_json(json.dumps([{"role": "user", "content": "table?"},
                                {"role": "assistant", "content": "| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nx = 1\n```"}]))
    reply = shown(panel)[-1]
    assert "<table>" in reply and "<td>1</td>" in reply and "<pre><code" in reply


class ConfiguredEngine(HeldEngine):
    """An engine whose model's generation_config sets sampling."""

    def get_default_sampling_params(self):
        return SamplingParams(temperature=0.6, top_p=0.95, max_tokens=1000)


def test_defaults_come_from_the_model_or_are_conservative(tiny_llm):
    plain = ChatPanel(tiny_llm)  # the tiny model's generation_config sets no sampling
    assert (plain.temperature.value, plain.top_p.value) == (CHAT_DEFAULTS["temperature"], CHAT_DEFAULTS["top_p"])
    assert plain.max_tokens.value == CHAT_MAX_TOKENS and "chat defaults" in plain.status.value
    configured = ChatPanel(ConfiguredEngine())
    assert (configured.temperature.value, configured.top_p.value, configured.max_tokens.value) == (0.6, 0.95, 256)
    assert "generation_config" in configured.status.value
    mine = ChatPanel(tiny_llm, sampling_params=SamplingParams(temperature=1.2, max_tokens=9))
    assert (mine.temperature.value, mine.max_tokens.value) == (1.2, 9) and "sampling:" not in mine.status.value
