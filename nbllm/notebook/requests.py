"""Submitting a batch of prompts and reading their outputs per prompt.

`open_streams` starts one stream per prompt through the public facade (`stream`
or `stream_chat`), so every request is in the engine at once and continuous
batching serves them together, while each output stays tied to its prompt.
`interleave` reads those streams round-robin in the caller's thread and closes
all of them on exit: an interrupt or an early break aborts what is unfinished.
Engines without `get_default_sampling_params` (a remote one) get vLLM's defaults.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

from nbllm.outputs import RequestOutput
from nbllm.sampling_params import SamplingParams


def default_params(llm: Any) -> SamplingParams:
    """The engine's default sampling parameters (its model's generation config), if it has any."""
    return llm.get_default_sampling_params() if hasattr(llm, "get_default_sampling_params") else SamplingParams()


def conversation(prompt: str, system: Optional[str] = None) -> list[dict]:
    """A one-turn chat: an optional system message and the prompt as the user's message."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}]


def open_streams(llm: Any, prompts: Sequence[str], params: SamplingParams, chat: bool = False,
                 system: Optional[str] = None) -> list[Iterator[RequestOutput]]:
    """One stream per prompt, all submitted before any is read; bad input raises here."""
    streams: list[Iterator[RequestOutput]] = []
    try:
        for prompt in prompts:
            if chat:
                streams.append(llm.stream_chat(conversation(prompt, system), params))
            else:
                streams.append(llm.stream(prompt, params))
    except BaseException:
        close_all(streams)
        raise
    return streams


def interleave(streams: Sequence[Iterator[RequestOutput]]) -> Iterator[tuple[int, RequestOutput]]:
    """Yield (prompt index, output) from all streams until each has finished."""
    active = dict(enumerate(streams))
    try:
        while active:
            for index in list(active):
                output = next(active[index], None)
                if output is None or output.finished:
                    del active[index]
                if output is not None:
                    yield index, output
    finally:
        close_all(streams)


def close_all(streams: Sequence[Any]) -> None:
    """Close streams; closing an unfinished one aborts its request and frees its blocks."""
    for stream in streams:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
