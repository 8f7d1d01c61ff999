"""Our models against Hugging Face transformers on the same tiny random weights.

Every supported architecture, and the config variants that take different code
paths (GQA/MQA, tied embeddings, biases, rope scaling, OPT's layouts, KV block
sizes, sliding windows shorter than the prompts, soft-capped scores and logits,
QK-norm, NoPE layers, LongRoPE), must give the same greedy tokens as transformers
and per-token logprobs within 1e-4 in float32. nbllm runs the prompts as one batch
over its paged cache; transformers runs them one at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from nbllm import LLM, SamplingParams
from nbllm.models.registry import SUPPORTED_ARCHITECTURES, UnsupportedArchitectureError
from tests.tiny_models import CORPUS, build_tokenizer, make_tiny_model, tiny_config

NEW_TOKENS = 24
LOGPROB_ATOL = 1e-4
PROMPTS = [
    "Paris",
    "The capital of Italy is",
    "def add(a, b):\n    return",
    " ".join(CORPUS[:2]),  # 64 tokens: several KV blocks of 16 or of 8
]


@dataclass(frozen=True)
class Case:
    name: str
    arch: str
    overrides: dict = field(default_factory=dict)  # config fields for make_tiny_model
    engine: dict = field(default_factory=dict)  # extra LLM(...) arguments
    prompts: tuple[str, ...] = tuple(PROMPTS)


CASES = [
    Case("llama-gqa", "LlamaForCausalLM"),  # 4 query heads over 2 kv heads
    Case("mistral", "MistralForCausalLM"),
    Case("qwen2", "Qwen2ForCausalLM"),
    Case("qwen3", "Qwen3ForCausalLM"),
    Case("gpt2", "GPT2LMHeadModel"),
    Case("opt", "OPTForCausalLM"),
    Case("llama-mqa", "LlamaForCausalLM", dict(num_key_value_heads=1)),
    Case("llama-tied-embeddings", "LlamaForCausalLM", dict(tie_word_embeddings=True)),
    Case("llama-attention-bias", "LlamaForCausalLM", dict(attention_bias=True)),
    Case("llama-rope-linear", "LlamaForCausalLM",
         dict(rope_parameters=dict(rope_type="linear", factor=2.0, rope_theta=10000.0))),
    Case("llama-rope-llama3", "LlamaForCausalLM",
         dict(rope_parameters=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                   original_max_position_embeddings=64, rope_theta=10000.0))),
    Case("llama-rope-yarn", "LlamaForCausalLM",
         dict(rope_parameters=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64,
                                   rope_theta=10000.0))),
    Case("llama-block-size-8", "LlamaForCausalLM", engine=dict(block_size=8)),
    Case("gpt2-inverse-layer-scale", "GPT2LMHeadModel", dict(scale_attn_by_inverse_layer_idx=True)),
    Case("opt-post-layernorm", "OPTForCausalLM", dict(do_layer_norm_before=False)),
    Case("opt-project-in-out", "OPTForCausalLM", dict(word_embed_proj_dim=32)),
    Case("mistral-sliding-window", "MistralForCausalLM", dict(sliding_window=12)),
    Case("qwen2-sliding-window", "Qwen2ForCausalLM",  # layer 0 full, layer 1 windowed
         dict(use_sliding_window=True, sliding_window=12, max_window_layers=1)),
    # Gemma 2: windows of 8 on layer 0, attention scores capped at 4 and logits at 3 (both often exceed them)
    Case("gemma2", "Gemma2ForCausalLM"),
    Case("gemma2-chunked-prefill", "Gemma2ForCausalLM",  # windows across chunks and cached blocks
         engine=dict(max_num_batched_tokens=12, block_size=8)),
    # the Triton kernels (through the interpreter on CPU): windows of 40 across their 32- and 64-token tiles
    Case("gemma2-triton", "Gemma2ForCausalLM", dict(sliding_window=40),
         engine=dict(attention_backend="triton", max_num_batched_tokens=24, block_size=8)),
    Case("gemma3", "Gemma3ForCausalLM"),  # QK-norm; rope base 1e4 on the windowed layer, 1e6 on the global one
    Case("gemma3-rope-linear", "Gemma3ForCausalLM", dict(rope_scaling=dict(rope_type="linear", factor=8.0))),
    Case("phi3", "Phi3ForCausalLM"),  # fused qkv/gate_up in the checkpoint; a window of 24 on every layer
    Case("phi3-longrope-short", "Phi3ForCausalLM",  # the table stays within the original context: short factors
         dict(rope_scaling=dict(rope_type="longrope", factor=4.0, short_factor=[1.0 + i / 8 for i in range(8)],
                                long_factor=[4.0] * 8))),
    # past an original context of 16 tokens: long factors for every position, as transformers for these prompts
    Case("phi3-longrope-long-partial-rotary", "Phi3ForCausalLM",
         dict(original_max_position_embeddings=16, partial_rotary_factor=0.5,
              rope_scaling=dict(rope_type="longrope", short_factor=[9.0] * 4, long_factor=[1.0, 1.5, 3.0, 6.0])),
         prompts=(CORPUS[1], CORPUS[3], CORPUS[4], " ".join(CORPUS[:2]))),
    Case("smollm3", "SmolLM3ForCausalLM"),  # NoPE on layers 1 and 3
    Case("smollm3-sliding-window", "SmolLM3ForCausalLM", dict(use_sliding_window=True, sliding_window=8)),
]


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float]


def _generate_nbllm(folder, prompt_ids: list[list[int]], engine: dict) -> list[Generation]:
    llm = LLM(str(folder), dtype="float32", device="cpu", num_kv_blocks=64, **engine)
    try:
        # min_tokens masks EOS as transformers' min_new_tokens does, so both pick the same argmax.
        params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, ignore_eos=True,
                                logprobs=0)
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    finally:
        llm.shutdown()
    results = []
    for output in outputs:
        completion = output.outputs[0]
        chosen = [entry[token].logprob for token, entry in zip(completion.token_ids, completion.logprobs)]
        results.append(Generation(list(completion.token_ids), chosen))
    return results


@torch.inference_mode()
def _generate_hf(model, ids: list[int]) -> Generation:
    input_ids = torch.tensor([ids])
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                         max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, output_logits=True,
                         return_dict_in_generate=True)
    tokens = out.sequences[0, len(ids):]  # [NEW_TOKENS]
    logprobs = torch.log_softmax(torch.cat(out.logits).float(), dim=-1)  # [NEW_TOKENS, V]: raw logits
    return Generation(tokens.tolist(), logprobs.gather(1, tokens[:, None]).squeeze(1).tolist())


@pytest.fixture(scope="module", params=CASES, ids=lambda case: case.name)
def parity(request, tmp_path_factory):
    """(prompt ids, nbllm generations, transformers generations) for one case, built once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    case = request.param
    folder = make_tiny_model(case.arch, tmp_path_factory.mktemp(case.name), **case.overrides)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt_ids = [tokenizer.encode(prompt) for prompt in case.prompts]
    ours = _generate_nbllm(folder, prompt_ids, case.engine)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    reference = [_generate_hf(model, ids) for ids in prompt_ids]
    return prompt_ids, ours, reference


def test_prompts_have_distinct_lengths_and_one_spans_several_blocks():
    lengths = [len(build_tokenizer().encode(prompt)) for prompt in PROMPTS]
    assert len(set(lengths)) == len(lengths)
    assert max(lengths) >= 40  # at least three KV blocks of 16, five of 8


def test_greedy_tokens_match_transformers(parity):
    prompt_ids, ours, reference = parity
    for ids, got, want in zip(prompt_ids, ours, reference):
        assert got.token_ids == want.token_ids, f"prompt of {len(ids)} tokens"


def test_logprobs_match_transformers(parity):
    prompt_ids, ours, reference = parity
    for ids, got, want in zip(prompt_ids, ours, reference):
        assert len(got.logprobs) == NEW_TOKENS
        diff = (torch.tensor(got.logprobs) - torch.tensor(want.logprobs)).abs().max().item()
        assert diff <= LOGPROB_ATOL, f"prompt of {len(ids)} tokens: max logprob difference {diff:.2e}"


def test_unsupported_architecture_lists_supported_ones(tmp_path):
    tokenizer = build_tokenizer()
    config = tiny_config("LlamaForCausalLM", len(tokenizer))
    config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "architectures": ["MambaForCausalLM"]}))
    with pytest.raises(UnsupportedArchitectureError) as excinfo:
        LLM(str(tmp_path), device="cpu")
    assert isinstance(excinfo.value, ValueError)
    message = str(excinfo.value)
    assert "MambaForCausalLM" in message
    assert all(arch in message for arch in SUPPORTED_ARCHITECTURES)
