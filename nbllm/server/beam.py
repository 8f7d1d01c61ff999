"""`use_beam_search` on the HTTP API: the engine's beam search, answered as n final completions.

The beam width is the request's n; each prompt's best n beams become its choices.
The searches go through `EngineClient.submit_beam_search` and the same bridge as
sampling (engine.submit on the event loop, outputs by deliver), so a client that
disconnects aborts its searches. Beam search returns only when done, so it is not
streamed. An engine whose `capabilities.beam_search` is False answers 400.
"""

from __future__ import annotations

from typing import Any

from nbllm.outputs import BeamSearchOutput, CompletionOutput, Logprob, RequestOutput
from nbllm.sampling_params import BeamSearchParams
from nbllm.server.bridge import EngineRequests, PreparedPrompt
from nbllm.server.errors import bad_request
from nbllm.server.state import ServerState


def start_beam_search(state: ServerState, prompts: list[PreparedPrompt], request_id: str,
                      fields: Any, length_penalty: float) -> EngineRequests:
    """One search per prompt, queued now; outputs() yields (prompt index, BeamSearchOutput)."""
    if not state.llm.capabilities.beam_search:
        raise bad_request("use_beam_search is not supported by this engine", "use_beam_search")
    params = [BeamSearchParams(beam_width=p.params.n, max_tokens=p.params.max_tokens, ignore_eos=p.params.ignore_eos,
                               temperature=p.params.temperature, length_penalty=length_penalty,
                               include_stop_str_in_output=p.params.include_stop_str_in_output) for p in prompts]
    return state.start(len(prompts), request_id, fields, lambda i, rid, deliver: state.llm.submit_beam_search(
        {"prompt": prompts[i].text, "prompt_token_ids": prompts[i].token_ids}, params[i], request_id=rid,
        deliver=deliver))


def as_request_output(state: ServerState, prompt: PreparedPrompt, output: BeamSearchOutput) -> RequestOutput:
    """A finished search as the RequestOutput the response builders take: its best n beams as completions."""
    p = prompt.params
    completions = []
    for rank, seq in enumerate(output.sequences[:p.n]):
        generated = seq.tokens[len(prompt.token_ids):]
        entries = [{t: Logprob(lp)} for t, lp in zip(generated, seq.logprobs)] if p.logprobs is not None else None
        text = seq.text if seq.text is not None else state.tokenizer.decode(generated, skip_special_tokens=True)
        completions.append(CompletionOutput(index=rank, text=text, token_ids=generated,
                                            cumulative_logprob=seq.cum_logprob, logprobs=entries,
                                            finish_reason=seq.finish_reason or "length", stop_reason=seq.stop_reason))
    return RequestOutput(request_id=output.request_id, prompt=prompt.text, prompt_token_ids=prompt.token_ids,
                         prompt_logprobs=None, outputs=completions, finished=True)
