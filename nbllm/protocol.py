"""EngineClient: the one contract every nbllm front-end speaks to an engine through.

`LLM` implements it in-process and `RemoteLLM` over an OpenAI-compatible server, so
the notebook layer, the views and the HTTP server take an `EngineClient` and work
with either. What a remote server cannot do is stated by `capabilities`, never found
out by probing attributes. Prompts are `PromptType`s (nbllm/inputs.py); outputs are
the dataclasses of nbllm/outputs.py; a request's outputs arrive on a RequestStream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional, Protocol, Sequence, Union, runtime_checkable

if TYPE_CHECKING:  # types only: importing this module stays light (no torch, no httpx)
    from nbllm.inputs import ParamsType, PromptsType, PromptType
    from nbllm.metrics import MetricsSnapshot
    from nbllm.outputs import BeamSearchOutput, RequestOutput
    from nbllm.sampling_params import BeamSearchParams, SamplingParams
    from nbllm.streams import Deliver, RequestStream

Conversation = list[dict]
Messages = Union[Conversation, list[Conversation]]


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine can do beyond generating text; front-ends say so where one is missing."""

    metrics: bool = True  # server-side metrics: get_stats() has the engine's counters (a remote server may serve
    # no /metrics; then get_stats() holds only this client's own counts from `usage`)
    block_states: bool = True  # get_stats().block_states holds the per-block picture
    tokenizer: bool = True  # get_tokenizer() can encode and decode
    beam_search: bool = True  # beam_search() works
    beam_tree: bool = True  # beam_search() outputs carry the search tree
    logprobs: bool = True  # outputs carry logprobs when asked for
    token_ids: bool = True  # outputs carry token ids


@runtime_checkable
class EngineClient(Protocol):
    """An engine, local or remote, as the notebook, the views and the server use it."""

    @property
    def model_name(self) -> str:
        """The served model's name."""

    @property
    def max_model_len(self) -> Optional[int]:
        """The context window in tokens (None where a remote server does not say)."""

    @property
    def is_running(self) -> bool:
        """False once shut down (or, for a remote engine, closed)."""

    @property
    def capabilities(self) -> EngineCapabilities:
        """What this engine supports beyond plain generation."""

    def get_tokenizer(self) -> Any:
        """An object with `encode(text)` and `decode(ids)` (and a chat template, locally)."""

    def get_default_sampling_params(self) -> "SamplingParams":
        """SamplingParams with the model's generation_config defaults applied."""

    def submit(self, prompt: "PromptType", sampling_params: Optional["SamplingParams"] = None,
               request_id: Optional[str] = None, deliver: Optional["Deliver"] = None) -> "RequestStream":
        """Start one request now; bad input raises here. Outputs follow sampling_params.output_kind."""

    def submit_chat(self, messages: Conversation, sampling_params: Optional["SamplingParams"] = None,
                    request_id: Optional[str] = None, deliver: Optional["Deliver"] = None,
                    chat_template: Optional[str] = None, add_generation_prompt: bool = True,
                    continue_final_message: bool = False, chat_template_kwargs: Optional[dict] = None,
                    tools: Optional[list[dict]] = None) -> "RequestStream":
        """Start one chat reply now (a local engine renders the template, a remote server its own)."""

    def abort(self, request_id: Union[str, Sequence[str]]) -> None:
        """Abort requests by id (unknown ids are ignored); their KV blocks are freed."""

    def generate(self, prompts: "PromptsType", sampling_params: "ParamsType" = None,
                 use_tqdm: bool = True) -> list["RequestOutput"]:
        """Final outputs of all prompts, in input order."""

    def stream(self, prompts: "PromptsType", sampling_params: "ParamsType" = None) -> Iterator["RequestOutput"]:
        """Outputs as they are produced (any order across prompts); closing it aborts the rest."""

    def chat(self, messages: Messages, sampling_params: "ParamsType" = None, use_tqdm: bool = True,
             chat_template: Optional[str] = None, add_generation_prompt: bool = True,
             continue_final_message: bool = False, chat_template_kwargs: Optional[dict] = None,
             tools: Optional[list[dict]] = None) -> list["RequestOutput"]:
        """Replies to one conversation or a list of them."""

    def stream_chat(self, messages: Messages, sampling_params: "ParamsType" = None,
                    chat_template: Optional[str] = None, add_generation_prompt: bool = True,
                    continue_final_message: bool = False, chat_template_kwargs: Optional[dict] = None,
                    tools: Optional[list[dict]] = None) -> Iterator["RequestOutput"]:
        """Like chat(), streamed as stream() is."""

    def render_chat_prompts(self, messages: Messages, chat_template: Optional[str] = None,
                            add_generation_prompt: bool = True, continue_final_message: bool = False,
                            chat_template_kwargs: Optional[dict] = None,
                            tools: Optional[list[dict]] = None) -> list[dict]:
        """Conversations rendered by the chat template into prompt dicts for submit/generate."""

    def beam_search(self, prompts: "PromptsType", params: "BeamSearchParams",
                    use_tqdm: bool = False) -> list["BeamSearchOutput"]:
        """Beam search for each prompt; see `capabilities.beam_search` and `.beam_tree`."""

    def submit_beam_search(self, prompt: "PromptType", params: "BeamSearchParams", request_id: Optional[str] = None,
                           deliver: Optional["Deliver"] = None) -> "RequestStream":
        """Start one beam search now; its stream ends with a BeamSearchOutput (with params.output_kind
        CUMULATIVE, unfinished ones holding the tree so far come after every step)."""

    def get_stats(self) -> "MetricsSnapshot":
        """A consistent snapshot of the engine (KV usage, queues, counters); see capabilities.metrics."""

    def shutdown(self) -> None:
        """Release the engine (local) or the connection (remote)."""
