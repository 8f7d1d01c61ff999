"""`use_beam_search` on the HTTP API: the engine's beam search, answered as n final completions.

The beam width is the request's n; each prompt's best n beams become its choices.
Beam search returns only when done, so it is not streamed; it runs in a worker thread.
An engine whose `capabilities.beam_search` is False answers 400.
"""

from __future__ import annotations

from nbllm.outputs import CompletionOutput, Logprob, RequestOutput
from nbllm.protocol import EngineClient
from nbllm.sampling_params import BeamSearchParams
from nbllm.server.bridge import PreparedPrompt
from nbllm.server.errors import bad_request, invalid_value
from nbllm.server.protocol import SamplingRequest
from nbllm.server.state import ServerState


async def run_beam_search(state: ServerState, body: SamplingRequest,
                          prompts: list[PreparedPrompt]) -> dict[int, RequestOutput]:
    if not state.llm.capabilities.beam_search:
        raise bad_request("use_beam_search is not supported by this engine", "use_beam_search")
    try:
        return await state.run(_search_all, state.llm, body, prompts)
    except (ValueError, TypeError) as exc:
        raise invalid_value(exc, type(body).model_fields) from None


def _search_all(llm: EngineClient, body: SamplingRequest, prompts: list[PreparedPrompt]) -> dict[int, RequestOutput]:
    results = {}
    for index, prompt in enumerate(prompts):
        p = prompt.params
        params = BeamSearchParams(beam_width=p.n, max_tokens=p.max_tokens, ignore_eos=p.ignore_eos,
                                  temperature=p.temperature, length_penalty=body.length_penalty,
                                  include_stop_str_in_output=p.include_stop_str_in_output)
        [output] = llm.beam_search([{"prompt": prompt.text, "prompt_token_ids": prompt.token_ids}], params)
        completions = []
        for rank, seq in enumerate(output.sequences[:p.n]):
            generated = seq.tokens[len(prompt.token_ids):]
            entries = [{t: Logprob(lp)} for t, lp in zip(generated, seq.logprobs)] if p.logprobs is not None else None
            text = seq.text if seq.text is not None else llm.get_tokenizer().decode(generated,
                                                                                     skip_special_tokens=True)
            completions.append(CompletionOutput(index=rank, text=text, token_ids=generated,
                                                cumulative_logprob=seq.cum_logprob, logprobs=entries,
                                                finish_reason=seq.finish_reason or "length",
                                                stop_reason=seq.stop_reason))
        results[index] = RequestOutput(request_id=f"beam-{index}", prompt=prompt.text,
                                       prompt_token_ids=prompt.token_ids, prompt_logprobs=None,
                                       outputs=completions, finished=True)
    return results
