"""RemoteLLM against the live nbllm server: the same greedy tokens and text as the local LLM, and the rest of
the EngineClient contract (submit, streaming, abort, stats, tokenizer, rendered chat prompts)."""

import pytest

from http_testing import API_KEY, MODEL, wait_idle
from nbllm import BeamSearchParams, EngineClient, RequestOutputKind, SamplingParams
from nbllm.client import RemoteError, RemoteLLM

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
PROMPTS = ["Once upon a time", "The capital of France is", {"prompt_token_ids": [5, 6, 7, 8]}]
CONVERSATIONS = [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "Tell me about Paris"}]]


@pytest.fixture
def remote(server):
    with RemoteLLM(f"{server.url}/v1", max_concurrency=4) as llm:
        yield llm


@pytest.fixture
def trusting_remote(trusting_server):
    """A RemoteLLM whose server accepts the chat templates requests send."""
    with RemoteLLM(f"{trusting_server.url}/v1", max_concurrency=4) as llm:
        yield llm


def _same(remote_outputs, local_outputs):
    for r, l in zip(remote_outputs, local_outputs, strict=True):
        assert r.finished and r.prompt_token_ids == l.prompt_token_ids
        assert [(c.text, c.token_ids, c.finish_reason) for c in r.outputs] == \
            [(c.text, c.token_ids, c.finish_reason) for c in l.outputs]


def test_model_info(remote, tiny_llm):
    assert remote.model_name == MODEL and remote.max_model_len == tiny_llm.max_model_len


def test_generate_matches_local(remote, tiny_llm):
    _same(remote.generate(PROMPTS, GREEDY, use_tqdm=False), tiny_llm.generate(PROMPTS, GREEDY, use_tqdm=False))


def test_logprobs_and_n_match_local(remote, tiny_llm):
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2, n=2)
    [r] = remote.generate("Hello", params, use_tqdm=False)
    [l] = tiny_llm.generate("Hello", params, use_tqdm=False)
    _same([r], [l])
    assert r.outputs[1].cumulative_logprob == pytest.approx(l.outputs[1].cumulative_logprob, abs=1e-3)
    for got, want in zip(r.outputs[0].logprobs, l.outputs[0].logprobs):
        assert {t: round(v.logprob, 3) for t, v in got.items()} == {t: round(v.logprob, 3) for t, v in want.items()}


def test_chat_matches_local(remote, trusting_remote, tiny_llm):
    _same(remote.chat(CONVERSATIONS, GREEDY, use_tqdm=False), tiny_llm.chat(CONVERSATIONS, GREEDY, use_tqdm=False))
    refused = remote.chat(CONVERSATIONS[0], GREEDY, use_tqdm=False, chat_template="plain")[0].outputs[0]
    assert refused.finish_reason == "error" and "--trust-request-chat-template" in refused.stop_reason
    single = trusting_remote.chat(CONVERSATIONS[0], GREEDY, use_tqdm=False, chat_template="plain")
    assert single[0].outputs[0].text == tiny_llm.chat(CONVERSATIONS[0], GREEDY, use_tqdm=False,
                                                      chat_template="plain")[0].outputs[0].text


def test_stream_is_cumulative_and_ends_like_generate(remote, tiny_llm):
    outputs = list(remote.stream(PROMPTS[:2], GREEDY))
    finals = {o.prompt: o for o in outputs if o.finished}
    _same([finals[p] for p in PROMPTS[:2]], tiny_llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False))
    first = [o for o in outputs if o.prompt == PROMPTS[0]]
    lengths = [len(o.outputs[0].token_ids) for o in first]
    assert lengths == sorted(lengths) and lengths[-1] == 10 and len(first) > 1


def test_stream_chat_matches_chat(remote, tiny_llm):
    *_, last = remote.stream_chat(CONVERSATIONS[1], GREEDY)
    _same([last], tiny_llm.chat(CONVERSATIONS[1], GREEDY, use_tqdm=False))


def test_closing_a_remote_stream_aborts_on_the_server(remote, tiny_llm):
    before = tiny_llm.get_stats().generation_tokens_total
    stream = remote.stream("Once upon a time", SamplingParams(max_tokens=240, ignore_eos=True))
    next(stream)
    stream.close()
    assert wait_idle(tiny_llm).generation_tokens_total - before < 240


def test_abort_by_request_id(remote, tiny_llm):
    stream = remote.stream("Once upon a time", SamplingParams(max_tokens=240, ignore_eos=True))
    first = next(stream)
    remote.abort(first.request_id)
    *_, last = stream
    assert last.finished and last.outputs[0].finish_reason == "abort"
    assert len(last.outputs[0].token_ids) < 240
    wait_idle(tiny_llm)


def test_metrics_and_tokenizer(remote, tiny_llm):
    remote.generate("Hello", GREEDY, use_tqdm=False)
    snapshot = remote.get_stats()
    local = tiny_llm.get_stats()
    assert snapshot.generation_tokens_total == local.generation_tokens_total
    assert snapshot.num_blocks_total == local.num_blocks_total and snapshot.block_size == local.block_size
    assert snapshot.time_to_first_token.count == local.time_to_first_token.count > 0
    assert snapshot.time_to_first_token.counts == local.time_to_first_token.counts
    tokenizer = remote.get_tokenizer()
    ids = tokenizer.encode("Hello world")
    assert ids == tiny_llm.get_tokenizer().encode("Hello world") and tokenizer.decode(ids) == "Hello world"


def test_bad_input_raises_before_any_request(remote):
    with pytest.raises(ValueError, match="prompts is empty"):
        remote.generate([], GREEDY)
    with pytest.raises(ValueError, match="2 SamplingParams for 1 prompts"):
        remote.generate(["a"], [GREEDY, GREEDY])
    with pytest.raises(TypeError):
        remote.stream([42], GREEDY)


def test_a_row_the_server_rejects_fails_alone(remote):
    outputs = remote.generate(["Hello", "word " * 300], GREEDY, use_tqdm=False)
    assert outputs[0].outputs[0].finish_reason == "length"
    failed = outputs[1].outputs[0]
    assert outputs[1].finished and failed.finish_reason == "error" and failed.text == ""
    assert "maximum context length" in failed.stop_reason


def test_key_and_model_errors_raise_on_connect(keyed_server, server):
    with pytest.raises(RemoteError, match="401"):
        RemoteLLM(keyed_server.url, model=MODEL)
    with RemoteLLM(keyed_server.url, api_key=API_KEY) as keyed:
        assert keyed.generate("Hi", GREEDY, use_tqdm=False)[0].outputs[0].finish_reason == "length"
    with pytest.raises(RemoteError, match="does not serve the model 'other'"):
        RemoteLLM(server.url, model="other")


def test_remote_is_an_engine_client(remote):
    assert isinstance(remote, EngineClient)
    assert remote.capabilities.metrics and not remote.capabilities.block_states
    assert not remote.capabilities.beam_search and remote.get_default_sampling_params() == SamplingParams()
    with pytest.raises(NotImplementedError, match="beam search"):
        remote.beam_search("Hi", BeamSearchParams(beam_width=2, max_tokens=4))


def test_abort_right_after_submit_ends_the_request_on_both_sides(remote, tiny_llm):
    before = tiny_llm.get_stats().generation_tokens_total
    stream = remote.submit("Once upon a time", SamplingParams(max_tokens=240, ignore_eos=True), request_id="early")
    with pytest.raises(ValueError, match="already running"):
        remote.submit("Hi", GREEDY, request_id="early")
    remote.abort("early")
    last = stream.result()
    assert last.request_id == "early" and last.finished and last.outputs[0].finish_reason == "abort"
    assert wait_idle(tiny_llm).generation_tokens_total - before < 240


def test_delta_outputs_add_up_to_the_final_output(remote, tiny_llm):
    deltas = list(remote.submit(PROMPTS[0], GREEDY.updated(output_kind=RequestOutputKind.DELTA)))
    [local] = tiny_llm.generate(PROMPTS[0], GREEDY, use_tqdm=False)
    assert len(deltas) > 1 and deltas[-1].finished
    assert "".join(d.outputs[0].text for d in deltas) == local.outputs[0].text
    assert sum((d.outputs[0].token_ids for d in deltas), []) == local.outputs[0].token_ids


def test_render_chat_prompts_matches_local(trusting_remote, tiny_llm):
    remote = trusting_remote
    rendered = remote.render_chat_prompts(CONVERSATIONS, chat_template="plain")
    local = tiny_llm.render_chat_prompts(CONVERSATIONS, chat_template="plain")
    assert [p["prompt_token_ids"] for p in rendered] == [p["prompt_token_ids"] for p in local]
    assert all(isinstance(p["prompt"], str) and p["prompt"] for p in rendered)
    _same(remote.generate(rendered, GREEDY, use_tqdm=False), tiny_llm.generate(local, GREEDY, use_tqdm=False))
