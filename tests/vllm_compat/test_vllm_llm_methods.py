"""LLM methods beyond generate, as vLLM has them: chat tools, beam search concurrency, metrics, prefix cache."""

from nbllm import SamplingParams
from nbllm.metrics_reader import Counter, Gauge, Histogram
from nbllm.sampling_params import BeamSearchParams

TOOL_TEMPLATE = ("{% for tool in tools or [] %}TOOL {{ tool['function']['name'] }}\n{% endfor %}"
                 "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:")
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def test_chat_hands_tools_to_the_template(tiny_llm):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    [prompt] = tiny_llm.render_chat_prompts(messages, chat_template=TOOL_TEMPLATE, tools=[WEATHER])
    assert prompt["prompt"].startswith("TOOL get_weather\nuser: Weather in Paris?")
    [output] = tiny_llm.chat(messages, SamplingParams(max_tokens=3, temperature=0), use_tqdm=False,
                             chat_template=TOOL_TEMPLATE, tools=[WEATHER])
    assert output.prompt == prompt["prompt"] and output.finished


def test_beam_search_concurrency_limit_gives_the_same_results(tiny_llm):
    prompts = [{"prompt_token_ids": [5 + i, 6, 7]} for i in range(5)]
    params = BeamSearchParams(beam_width=2, max_tokens=4)
    together = tiny_llm.beam_search(prompts, params)
    limited = tiny_llm.beam_search(prompts, params, concurrency_limit=2)
    assert [[s.tokens for s in o.sequences] for o in limited] == [[s.tokens for s in o.sequences] for o in together]


def test_get_metrics_is_vllms_list_of_metric_objects(tiny_llm):
    tiny_llm.generate(["Hello", "Hi"], SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)
    metrics = {m.name: m for m in tiny_llm.get_metrics()}
    assert isinstance(metrics["vllm:num_requests_running"], Gauge)
    assert isinstance(metrics["vllm:generation_tokens"], Counter) and metrics["vllm:generation_tokens"].value >= 6
    ttft = metrics["vllm:time_to_first_token_seconds"]
    assert isinstance(ttft, Histogram) and ttft.count >= 2 and ttft.buckets["+Inf"] == ttft.count
    assert list(ttft.buckets.values()) == sorted(ttft.buckets.values())  # cumulative, as Prometheus counts


def test_num_unfinished_requests_and_reset_prefix_cache(tiny_llm):
    stream = tiny_llm.submit("Once upon a time", SamplingParams(max_tokens=200, ignore_eos=True))
    stream.get()
    assert tiny_llm.llm_engine.get_num_unfinished_requests() == 1
    stream.close()
    tiny_llm.generate("a shared prefix long enough to fill a few blocks of eight tokens",
                      SamplingParams(max_tokens=2), use_tqdm=False)
    assert tiny_llm.get_stats().num_blocks_cached > 0
    assert tiny_llm.reset_prefix_cache() is True
    assert tiny_llm.get_stats().num_blocks_cached == 0
    assert tiny_llm.llm_engine.get_num_unfinished_requests() == 0


def test_generation_config_penalties_and_skip_special_tokens_are_defaults(tiny_llama_path, tmp_path):
    import json
    import shutil

    from nbllm import LLM

    model = tmp_path / "model"
    shutil.copytree(tiny_llama_path, model)
    json.dump({"presence_penalty": 0.5, "frequency_penalty": 0.25, "skip_special_tokens": False, "temperature": 0.7},
              open(model / "generation_config.json", "w"))
    with LLM(str(model), num_kv_blocks=16, block_size=8) as llm:
        defaults = llm.get_default_sampling_params()
    assert (defaults.presence_penalty, defaults.frequency_penalty) == (0.5, 0.25)
    assert defaults.skip_special_tokens is False and defaults.temperature == 0.7
