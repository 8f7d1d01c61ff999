"""The LLM facade: vLLM's offline API over one engine that lives as long as the kernel.

`generate` blocks until its requests finish (with a progress bar); `stream` yields
outputs as they are produced; `submit` returns a RequestStream for callers that
manage their own waiting (the chat panel, the server). All of them share one
background step loop, so concurrent callers are batched together. An interrupt
while waiting aborts the caller's requests and leaves the engine serving.
"""

from __future__ import annotations

import queue
from typing import Any, Iterator, Optional, Sequence, Union

from nbllm.chat_utils import is_single_conversation, render_chat
from nbllm.config import EngineConfig
from nbllm.engine.engine_loop import EngineLoop, RequestStream
from nbllm.engine.llm_engine import LLMEngine
from nbllm.metrics import MetricsSnapshot
from nbllm.outputs import BeamSearchOutput, RequestOutput
from nbllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams

PromptType = Union[str, dict]
_POLL_S = 0.05


class LLM:
    """An LLM with its engine, e.g. ``LLM()`` for the embedded default model.

    Keyword arguments are EngineConfig fields (dtype, max_model_len, block_size,
    max_num_seqs, max_num_batched_tokens, enable_prefix_caching,
    kv_cache_memory_bytes, num_kv_blocks, attention_backend, generation_config, ...).
    """

    def __init__(self, model: Optional[str] = None, **engine_kwargs: Any):
        self.config = EngineConfig.from_kwargs(model=model, **engine_kwargs)
        self._loop = EngineLoop(lambda: LLMEngine(self.config))  # built in the loop's own thread
        self.llm_engine = self._loop.engine

    # ----------------------------------------------------------------- basics
    @property
    def model_name(self) -> str:
        return str(self.config.model) if self.config.model else "SmolLM2-135M-Instruct"

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        return self.llm_engine.get_default_sampling_params()

    @property
    def max_model_len(self) -> int:
        return self.llm_engine.max_model_len

    def get_metrics(self) -> MetricsSnapshot:
        return self._loop.call(lambda engine: engine.get_metrics())

    # ----------------------------------------------------------------- inputs
    def _tokenize(self, prompt: PromptType) -> tuple[Optional[str], list[int]]:
        if isinstance(prompt, str):
            return prompt, self.get_tokenizer().encode(prompt)
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]
                if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) for t in ids):
                    raise TypeError("prompt_token_ids must be a list of int")
                return prompt.get("prompt"), list(ids)
            if "prompt" in prompt and isinstance(prompt["prompt"], str):
                return prompt["prompt"], self.get_tokenizer().encode(prompt["prompt"])
            raise ValueError(f"a prompt dict needs 'prompt' (str) or 'prompt_token_ids', got keys {sorted(prompt)}")
        raise TypeError(f"a prompt must be a str or a dict with 'prompt' or 'prompt_token_ids', "
                        f"got {type(prompt).__name__}")

    def _normalize(self, prompts: Union[PromptType, Sequence[PromptType]],
                   sampling_params: Union[None, SamplingParams, Sequence[SamplingParams]]
                   ) -> list[tuple[Optional[str], list[int], SamplingParams]]:
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)):
            raise TypeError(f"prompts must be a str, a prompt dict, or a list of them, got {type(prompts).__name__}")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts is empty: pass at least one prompt")
        if sampling_params is None:
            params_list = [self.get_default_sampling_params()] * len(prompts)
        elif isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(f"got {len(params_list)} SamplingParams for {len(prompts)} prompts; "
                                 f"pass one, or one per prompt")
            if not all(isinstance(p, SamplingParams) for p in params_list):
                raise TypeError("sampling_params must be SamplingParams or a list of them")
        return [(*self._tokenize(p), sp) for p, sp in zip(prompts, params_list)]

    # ----------------------------------------------------------------- generation
    def submit(self, prompt: PromptType, sampling_params: Optional[SamplingParams] = None,
               request_id: Optional[str] = None) -> RequestStream:
        """Start one request and return its stream (outputs per sampling_params.output_kind)."""
        [(text, ids, params)] = self._normalize([prompt], sampling_params)
        return self._loop.submit(text, ids, params, request_id)

    def abort(self, request_id: Union[str, Sequence[str]]) -> None:
        """Abort requests by id; their blocks are freed before the next step."""
        self._loop.abort(request_id)

    def generate(self, prompts: Union[PromptType, Sequence[PromptType]],
                 sampling_params: Union[None, SamplingParams, Sequence[SamplingParams]] = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Generate completions for all prompts; results come back in input order."""
        items = self._normalize(prompts, sampling_params)
        sink: "queue.Queue[tuple[int, Any]]" = queue.Queue()
        streams = self._submit_all(items, RequestOutputKind.FINAL_ONLY, sink)
        return self._collect(streams, sink, use_tqdm)

    def _collect(self, streams: list[RequestStream], sink: "queue.Queue", use_tqdm: bool) -> list:
        """Wait for every stream's final output; an interrupt aborts the unfinished ones."""
        results: list[Any] = [None] * len(streams)
        bar = _progress_bar(len(streams)) if use_tqdm else None
        generated = 0
        try:
            remaining = len(streams)
            while remaining:
                index, item = _get(sink)
                if isinstance(item, BaseException):
                    raise item
                results[index] = item
                remaining -= 1
                generated += sum(len(o.token_ids) for o in getattr(item, "outputs", ()))
                if bar is not None:
                    bar.update(1)
                    elapsed = bar.format_dict.get("elapsed") or 1e-9
                    bar.set_postfix_str(f"{generated / elapsed:.1f} tok/s", refresh=False)
        except BaseException:
            self._loop.abort([s.request_id for i, s in enumerate(streams) if results[i] is None])
            raise
        finally:
            if bar is not None:
                bar.close()
        return results

    def beam_search(self, prompts: Union[PromptType, Sequence[PromptType]], params: BeamSearchParams,
                    use_tqdm: bool = False) -> list[BeamSearchOutput]:
        """Beam search for each prompt (batched together); each output holds ranked beams and the tree."""
        if not isinstance(params, BeamSearchParams):
            raise TypeError(f"params must be BeamSearchParams, got {type(params).__name__}")
        items = self._normalize(prompts, SamplingParams())
        sink: "queue.Queue[tuple[int, Any]]" = queue.Queue()
        streams: list[RequestStream] = []
        try:
            for index, (text, ids, _) in enumerate(items):
                streams.append(self._loop.submit_beam_search(text, ids, params, sink=sink, sink_key=index))
        except BaseException:
            self._loop.abort([s.request_id for s in streams])
            raise
        return self._collect(streams, sink, use_tqdm)

    def chat(self, messages: Union[list[dict], list[list[dict]]],
             sampling_params: Union[None, SamplingParams, Sequence[SamplingParams]] = None,
             use_tqdm: bool = True, chat_template: Optional[str] = None, add_generation_prompt: bool = True,
             continue_final_message: bool = False, chat_template_kwargs: Optional[dict] = None
             ) -> list[RequestOutput]:
        """Generate replies to one conversation or a list of them, batched together."""
        prompts = self.render_chat_prompts(messages, chat_template, add_generation_prompt, continue_final_message,
                                           chat_template_kwargs)
        return self.generate(prompts, sampling_params, use_tqdm)

    def stream_chat(self, messages: Union[list[dict], list[list[dict]]],
                    sampling_params: Union[None, SamplingParams, Sequence[SamplingParams]] = None,
                    chat_template: Optional[str] = None, add_generation_prompt: bool = True,
                    continue_final_message: bool = False, chat_template_kwargs: Optional[dict] = None
                    ) -> Iterator[RequestOutput]:
        """Like chat(), but yields outputs as they are produced (see stream())."""
        prompts = self.render_chat_prompts(messages, chat_template, add_generation_prompt, continue_final_message,
                                           chat_template_kwargs)
        return self.stream(prompts, sampling_params)

    def render_chat_prompts(self, messages: Union[list[dict], list[list[dict]]],
                            chat_template: Optional[str] = None, add_generation_prompt: bool = True,
                            continue_final_message: bool = False,
                            chat_template_kwargs: Optional[dict] = None) -> list[dict]:
        """Conversations rendered by the chat template into prompt dicts for generate/stream/submit."""
        conversations = [messages] if is_single_conversation(messages) else list(messages)
        if not conversations:
            raise ValueError("messages is empty: pass a conversation or a list of conversations")
        prompts = []
        for conversation in conversations:
            text, ids = render_chat(self.get_tokenizer(), conversation, chat_template, add_generation_prompt,
                                    continue_final_message, chat_template_kwargs)
            prompts.append({"prompt": text, "prompt_token_ids": ids})
        return prompts

    def stream(self, prompts: Union[PromptType, Sequence[PromptType]],
               sampling_params: Union[None, SamplingParams, Sequence[SamplingParams]] = None
               ) -> Iterator[RequestOutput]:
        """Yield outputs of all prompts as they are produced (any order across prompts).

        Closing the iterator early, or an interrupt, aborts the unfinished requests.
        """
        items = self._normalize(prompts, sampling_params)
        sink: "queue.Queue[tuple[int, Any]]" = queue.Queue()
        streams = self._submit_all(items, None, sink)  # bad input raises here, not at first next()
        return self._drain(sink, {s.request_id for s in streams})

    def _drain(self, sink: "queue.Queue", unfinished: set[str]) -> Iterator[RequestOutput]:
        try:
            while unfinished:
                _, item = _get(sink)
                if isinstance(item, BaseException):
                    raise item
                if item.finished:
                    unfinished.discard(item.request_id)
                yield item
        finally:
            if unfinished:
                self._loop.abort(list(unfinished))

    def _submit_all(self, items, output_kind: Optional[RequestOutputKind],
                    sink: "queue.Queue") -> list[RequestStream]:
        streams: list[RequestStream] = []
        try:
            for index, (text, ids, params) in enumerate(items):
                if output_kind is not None and params.output_kind != output_kind:
                    params = params.updated(output_kind=output_kind)
                stream = self._loop.submit(text, ids, params, sink=sink, sink_key=index)
                streams.append(stream)
        except BaseException:
            self._loop.abort([s.request_id for s in streams])
            raise
        return streams

    # ----------------------------------------------------------------- serving
    def serve(self, host: str = "127.0.0.1", port: int = 8000, api_key: Optional[str] = None,
              model_name: Optional[str] = None):
        """Serve this engine over an OpenAI-compatible HTTP API from a background thread.

        The notebook keeps using the engine meanwhile; both are batched together.
        Returns a handle with `.url` and `.stop()`.
        """
        from nbllm.server import serve_in_background

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


def _get(sink: "queue.Queue") -> Any:
    """Wait on a queue in short slices so an interrupt is seen promptly."""
    while True:
        try:
            return sink.get(timeout=_POLL_S)
        except queue.Empty:
            continue


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Processed prompts", unit="req", dynamic_ncols=True)
