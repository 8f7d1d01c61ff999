"""LLM: vLLM's offline API over one in-process engine that lives as long as the kernel.

`LLM` implements EngineClient (nbllm/protocol.py). `submit` validates and tokenizes
in the caller's thread, then queues the request for the engine's thread and returns
its RequestStream; everything else is built on it: `generate` waits for all final
outputs with a progress bar, `stream` yields outputs as they come, `chat` renders
conversations first. Concurrent callers share one continuous batch. An interrupt
while waiting aborts the caller's requests and leaves the engine serving.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator, Optional, Sequence, Union

from nbllm import batch
from nbllm.chat_utils import render_chat
from nbllm.config import EngineConfig
from nbllm.engine.engine_loop import EngineLoop
from nbllm.engine.llm_engine import LLMEngine
from nbllm.inputs import ParamsType, PromptsType, PromptType, as_list, conversations_of, priorities_per_prompt
from nbllm.metrics import MetricsSnapshot
from nbllm.metrics_reader import Metric, metrics_from_snapshot
from nbllm.outputs import BeamSearchOutput, RequestOutput
from nbllm.protocol import Conversation, EngineCapabilities, Messages
from nbllm.sampling_params import BeamSearchParams, SamplingParams
from nbllm.streams import Deliver, RequestStream

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


class LLM:
    """An LLM with its engine: ``LLM()`` for the embedded default model, ``LLM("org/name")``
    for a Hugging Face hub id (from the local cache when offline), a model folder or a .gguf file.

    Keyword arguments are EngineConfig fields, named as vLLM's engine arguments (dtype,
    max_model_len, block_size, max_num_seqs, max_num_batched_tokens, enable_prefix_caching,
    scheduling_policy, max_logprobs, logprobs_mode, skip_tokenizer_init, revision,
    download_dir, kv_cache_memory_bytes, num_kv_blocks, attention_backend, generation_config, ...).
    """

    def __init__(self, model: Optional[str] = None, **engine_kwargs: Any):
        self.config = EngineConfig.from_kwargs(model=model, **engine_kwargs)
        self._loop = EngineLoop(lambda: LLMEngine.from_config(self.config))  # built in the loop's own thread
        self.llm_engine = self._loop.engine
        self._request_ids = itertools.count(1)

    # ----------------------------------------------------------------- basics
    @property
    def model_name(self) -> str:
        return str(self.config.model) if self.config.model else DEFAULT_MODEL_NAME

    @property
    def max_model_len(self) -> int:
        return self.llm_engine.max_model_len

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities()

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        return self.llm_engine.get_default_sampling_params()

    def get_stats(self) -> MetricsSnapshot:
        """A consistent snapshot of the engine, taken between two steps."""
        return self._loop.call(lambda engine: engine.core.get_stats())

    def get_metrics(self) -> list[Metric]:
        """vLLM's metrics list (Counter, Gauge, Histogram with vLLM's names); see get_stats() for the snapshot."""
        return metrics_from_snapshot(self.get_stats(), self.model_name)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix not in use by a running request (vLLM's reset_prefix_cache)."""
        self._loop.call(lambda engine: engine.core.reset_prefix_cache())
        return True

    def sleep(self, level: int = 1) -> None:
        """Free the engine's memory without a restart (vLLM's sleep mode); wake_up() restores it.

        Level 1 frees the KV cache (on a GPU the weights also move to the CPU); level 2
        frees the weights as well, which wake_up() reloads from the checkpoint. Requests
        must have finished first.
        """
        self._loop.call(lambda engine: engine.core.sleep(level))

    def wake_up(self, tags: Optional[list[str]] = None) -> bool:
        """Restore what sleep() released: "weights", "kv_cache", or both (None); True once fully awake."""
        return self._loop.call(lambda engine: engine.core.wake_up(tags))

    # ----------------------------------------------------------------- requests
    def submit(self, prompt: PromptType, sampling_params: Optional[SamplingParams] = None,
               request_id: Optional[str] = None, deliver: Optional[Deliver] = None,
               priority: int = 0) -> RequestStream:
        """Start one request and return its stream (outputs per sampling_params.output_kind).

        Bad input raises here. With `deliver`, outputs go to that function instead of
        the stream's own queue (for callers that wait on many requests at once).
        `priority` orders requests under scheduling_policy="priority" (lower runs first).
        """
        self._check_awake()
        params = sampling_params if sampling_params is not None else self.get_default_sampling_params()
        request_id = request_id if request_id is not None else self._next_request_id()
        new_request = self.llm_engine.input_processor.process(request_id, prompt, params, priority)
        stream = RequestStream(request_id, deliver, on_close=self.abort)
        self._loop.add(new_request, stream)
        return stream

    def submit_beam_search(self, prompt: PromptType, params: BeamSearchParams, request_id: Optional[str] = None,
                           deliver: Optional[Deliver] = None) -> RequestStream:
        """Start one beam search; its stream receives one BeamSearchOutput when it ends."""
        self._check_awake()
        request_id = request_id if request_id is not None else self._next_request_id()
        new_search = self.llm_engine.input_processor.process_beam_search(request_id, prompt, params)
        stream = RequestStream(request_id, deliver, on_close=self.abort)
        self._loop.add(new_search, stream)
        return stream

    def submit_chat(self, messages: Conversation, sampling_params: Optional[SamplingParams] = None,
                    request_id: Optional[str] = None, deliver: Optional[Deliver] = None,
                    chat_template: Optional[str] = None, add_generation_prompt: bool = True,
                    continue_final_message: bool = False, chat_template_kwargs: Optional[dict] = None,
                    tools: Optional[list[dict]] = None) -> RequestStream:
        """Start one chat reply now: the conversation rendered by the chat template, then submit()."""
        [prompt] = self.render_chat_prompts([messages], chat_template, add_generation_prompt,
                                            continue_final_message, chat_template_kwargs, tools)
        return self.submit(prompt, sampling_params, request_id, deliver)

    def abort(self, request_id: Union[str, Sequence[str]]) -> None:
        """Abort requests by id; their blocks are freed before the next step."""
        self._loop.abort(request_id)

    def _check_awake(self) -> None:
        if self.llm_engine.runner.is_sleeping:
            raise RuntimeError("the engine is asleep (llm.sleep()); call llm.wake_up() before generating")

    def _next_request_id(self) -> str:
        return str(next(self._request_ids))

    # ----------------------------------------------------------------- generation
    def generate(self, prompts: PromptsType, sampling_params: ParamsType = None, use_tqdm: bool = True,
                 priority: Union[None, int, Sequence[int]] = None) -> list[RequestOutput]:
        """Generate completions for all prompts; results come back in input order.

        `priority`: one int, or one per prompt (scheduling_policy="priority"; lower runs first).
        """
        priorities = priorities_per_prompt(priority, len(as_list(prompts)))
        return batch.generate(self, prompts, sampling_params, use_tqdm, [{"priority": p} for p in priorities])

    def stream(self, prompts: PromptsType, sampling_params: ParamsType = None) -> Iterator[RequestOutput]:
        """Yield outputs of all prompts as they are produced (any order across prompts).

        Closing the iterator early, or an interrupt, aborts the unfinished requests.
        """
        return batch.stream(self, prompts, sampling_params)

    def beam_search(self, prompts: PromptsType, params: BeamSearchParams, use_tqdm: bool = False,
                    concurrency_limit: Optional[int] = None) -> list[BeamSearchOutput]:
        """Beam search for each prompt; each output holds ranked beams and the tree.

        The searches run batched together, at most `concurrency_limit` at a time (None: all).
        """
        if not isinstance(params, BeamSearchParams):
            raise TypeError(f"params must be BeamSearchParams, got {type(params).__name__}")
        items = as_list(prompts)
        if concurrency_limit is not None and (not isinstance(concurrency_limit, int) or concurrency_limit < 1):
            raise ValueError(f"concurrency_limit must be a positive int or None, got {concurrency_limit!r}")
        limit = concurrency_limit or len(items)
        results: list[BeamSearchOutput] = []
        for start in range(0, len(items), limit):
            chunk = items[start:start + limit]
            searches = batch.submit_all(self, len(chunk), lambda i, deliver: self.submit_beam_search(
                chunk[i], params, deliver=deliver))
            results += batch.collect(searches, use_tqdm)
        return results

    def chat(self, messages: Messages, sampling_params: ParamsType = None, use_tqdm: bool = True,
             chat_template: Optional[str] = None, add_generation_prompt: bool = True,
             continue_final_message: bool = False, chat_template_kwargs: Optional[dict] = None,
             tools: Optional[list[dict]] = None,
             priority: Union[None, int, Sequence[int]] = None) -> list[RequestOutput]:
        """Generate replies to one conversation or a list of them, batched together.

        `tools` (OpenAI-style function schemas) are handed to the chat template, as vLLM does.
        """
        prompts = self.render_chat_prompts(messages, chat_template, add_generation_prompt, continue_final_message,
                                           chat_template_kwargs, tools)
        return self.generate(prompts, sampling_params, use_tqdm, priority)

    def stream_chat(self, messages: Messages, sampling_params: ParamsType = None,
                    chat_template: Optional[str] = None, add_generation_prompt: bool = True,
                    continue_final_message: bool = False, chat_template_kwargs: Optional[dict] = None,
                    tools: Optional[list[dict]] = None) -> Iterator[RequestOutput]:
        """Like chat(), but yields outputs as they are produced (see stream())."""
        prompts = self.render_chat_prompts(messages, chat_template, add_generation_prompt, continue_final_message,
                                           chat_template_kwargs, tools)
        return self.stream(prompts, sampling_params)

    def render_chat_prompts(self, messages: Messages, chat_template: Optional[str] = None,
                            add_generation_prompt: bool = True, continue_final_message: bool = False,
                            chat_template_kwargs: Optional[dict] = None,
                            tools: Optional[list[dict]] = None) -> list[dict]:
        """Conversations rendered by the chat template into prompt dicts for generate/stream/submit."""
        prompts = []
        for conversation in conversations_of(messages):
            text, ids = render_chat(self.get_tokenizer(), conversation, chat_template, add_generation_prompt,
                                    continue_final_message, chat_template_kwargs, tools)
            prompts.append({"prompt": text, "prompt_token_ids": ids})
        return prompts

    # ----------------------------------------------------------------- serving
    def serve(self, host: str = "127.0.0.1", port: int = 8000, api_key: Optional[str] = None,
              model_name: Optional[str] = None):
        """Serve this engine over an OpenAI-compatible HTTP API from a background thread.

        The notebook keeps using the engine meanwhile; both are batched together.
        Returns a handle with `.url` and `.stop()`.
        """
        from nbllm.server.background import serve_in_background

        return serve_in_background(self, host=host, port=port, api_key=api_key, model_name=model_name)

    # ----------------------------------------------------------------- lifetime
    def shutdown(self) -> None:
        """Stop the step loop and free the weights and KV pool."""
        self._loop.shutdown()

    @property
    def is_running(self) -> bool:
        return self._loop.is_running

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
