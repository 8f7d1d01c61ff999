"""What every route shares: the engine (any EngineClient), the served name, the options, the limits' checks.

Submitting and aborting only queue work for the engine, so routes call them on the
event loop. Tokenizing takes CPU time, so it goes through `run` (a worker thread)
and the event loop never waits on it; chat templates render in a killable worker
process (chat_render.py) when the engine's tokenizer is a local transformers one.
The limits are checked before any of that work starts, each error naming its flag.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, TypeVar

import anyio

from nbllm.outputs import RequestOutput
from nbllm.protocol import EngineClient
from nbllm.sampling_params import SamplingParams
from nbllm.server.bridge import EngineRequests, PreparedPrompt, Submit
from nbllm.server.chat_render import RenderFailed, RenderJob, RenderTimeout, TemplateRenderer, can_fork
from nbllm.server.errors import OpenAIError, bad_request, invalid_value
from nbllm.server.options import ServerOptions
from nbllm.server.request_stats import RequestStats
from nbllm.server.sampling import model_defaults

T = TypeVar("T")


@dataclass
class ServerState:
    llm: EngineClient
    model_name: str
    api_key: Optional[str] = None
    options: ServerOptions = field(default_factory=ServerOptions)
    defaults: dict[str, Any] = field(init=False)
    max_model_len: int = field(init=False)
    stats: RequestStats = field(init=False)
    renderer: Optional[TemplateRenderer] = field(init=False)
    in_flight: int = 0  # generation requests being answered (GET /load)
    draining: bool = False  # stopping: new generation requests get 503, in-flight ones finish

    def __post_init__(self) -> None:
        if not self.llm.capabilities.tokenizer:
            raise ValueError(f"the server tokenizes prompts, but this engine ({type(self.llm).__name__}) "
                             f"has no tokenizer (its capabilities.tokenizer is False)")
        if self.llm.max_model_len is None:
            raise ValueError(f"the server checks prompt lengths, but this engine ({type(self.llm).__name__}) "
                             f"does not say its max_model_len")
        self.defaults = model_defaults(self.llm.get_default_sampling_params())
        self.max_model_len = self.llm.max_model_len
        self.stats = RequestStats(self.max_model_len)
        tokenizer = self.llm.get_tokenizer()
        transformers = sys.modules.get("transformers")  # a remote engine's tokenizer renders on its server
        local = can_fork() and transformers is not None and isinstance(tokenizer, transformers.PreTrainedTokenizerBase)
        self.renderer = TemplateRenderer(tokenizer, self.options.chat_template_timeout,
                                         self.options.chat_template_memory_bytes, self.max_prompt_chars) \
            if local else None

    @property
    def tokenizer(self) -> Any:
        return self.llm.get_tokenizer()

    @property
    def max_prompt_chars(self) -> int:
        return self.max_model_len * self.options.max_prompt_chars_per_token

    def observe(self, final: RequestOutput, params: SamplingParams) -> None:
        """Count a finished request in the per-request statistics (/metrics)."""
        self.stats.observe(final, params.n, params.max_tokens, time.monotonic())

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()

    # ----------------------------------------------------------------- checks
    def check_model(self, name: Optional[str]) -> None:
        """vLLM's rule: no model name means the served one; any other name is a 404."""
        if name and name != self.model_name:
            raise OpenAIError(404, f"The model `{name}` does not exist. This server serves `{self.model_name}`.",
                              "model")

    def check_accepting(self) -> None:
        """503 once the engine has shut down (a stopping server refuses new requests at the door: app.py)."""
        if not self.llm.is_running:
            raise OpenAIError(503, "the engine has been shut down")

    def check_sequences(self, count: int, param: str = "n") -> None:
        limit = self.options.max_sequences_per_request
        if count > limit:
            raise bad_request(f"this request asks for {count} sequences (prompts x n), more than the server's "
                              f"limit of {limit} per request (nbllm serve --max-sequences-per-request)", param)

    def check_text(self, text: str, param: str) -> None:
        """A prompt's text: valid Unicode, and not so long that it cannot fit the context window."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise bad_request(f"{param} is not valid Unicode: {exc.reason} at character {exc.start} "
                              f"(a lone UTF-16 surrogate?)", param) from None
        if len(text) > self.max_prompt_chars:
            raise bad_request(f"{param} has {len(text)} characters: more than the {self.max_prompt_chars} that "
                              f"can fit this model's maximum context length of {self.max_model_len} tokens "
                              f"(nbllm serve --max-prompt-chars-per-token raises the bound)", param)

    # ----------------------------------------------------------------- work
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker thread (tokenizing)."""
        return await anyio.to_thread.run_sync(fn, *args)

    async def render_chat(self, job: RenderJob) -> tuple[str, list[int]]:
        """The rendered conversation and its token ids; a 400 when the template fails or runs too long."""
        if self.renderer is None:
            [rendered] = await self.run(lambda: self.llm.render_chat_prompts(
                [job.conversation], job.chat_template, job.add_generation_prompt, job.continue_final_message,
                job.chat_template_kwargs, job.tools))
            return rendered["prompt"], rendered["prompt_token_ids"]
        try:
            text = await self.run(self.renderer.render, job)
        except RenderTimeout:
            raise bad_request(f"the chat template did not finish rendering within {self.renderer.timeout_s} s "
                              f"(nbllm serve --chat-template-timeout)", "messages") from None
        except RenderFailed as exc:
            raise bad_request(f"the chat template could not render these messages: {exc}", "messages") from None
        self.check_text(text, "messages")  # message fields beside content end up in the text too
        return text, await self.run(lambda: self.tokenizer.encode(text, add_special_tokens=False))

    def submit(self, prompts: list[PreparedPrompt], request_id: str, fields: Iterable[str],
               renamed: Optional[dict[str, str]] = None) -> EngineRequests:
        """Queue the prompts; the engine's complaints about the input become 400s naming the field."""
        return self.start(len(prompts), request_id, fields, lambda i, rid, deliver: self.llm.submit(
            {"prompt": prompts[i].text, "prompt_token_ids": prompts[i].token_ids}, prompts[i].params,
            request_id=rid, deliver=deliver), renamed)

    def start(self, count: int, request_id: str, fields: Iterable[str], submit: Submit,
              renamed: Optional[dict[str, str]] = None) -> EngineRequests:
        """`renamed`: the request's names of SamplingParams fields the engine may name (chat's top_logprobs)."""
        self.check_accepting()
        try:
            return EngineRequests.start(self.llm, count, request_id, submit)
        except (ValueError, TypeError) as exc:
            error = invalid_value(exc, fields)
            error.param = (renamed or {}).get(error.param or "", error.param)
            raise error from None
