"""GGUF -> HF folder conversion, checked on a tiny Llama written the way llama.cpp writes one.

The tiny model's weights are known, so the converted folder is compared three ways: with the
weights that went in (up to quantization error), with transformers' own GGUF reading (exactly),
and by the logits of transformers models loaded from each.
"""

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from safetensors.torch import load_file
from tokenizers.pre_tokenizers import ByteLevel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig

from nbllm.gguf_convert import convert_gguf_to_hf_folder, temporary_dirs, unpermute_rotary

HIDDEN, HEADS, KV_HEADS, LAYERS, FFN = 64, 4, 2, 2, 128
ROPE_THETA, RMS_EPS = 50_000.0, 1e-5
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
MERGES = ["h e", "l l", "Ġ t", "Ġt he", "o r"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# HF leaf -> (GGUF leaf, stored type). Every storage type the converter meets is used once at least.
BLOCK_TENSORS = {
    "self_attn.q_proj": ("attn_q", QType.F32),
    "self_attn.k_proj": ("attn_k", QType.Q8_0),
    "self_attn.v_proj": ("attn_v", QType.Q4_1),
    "self_attn.o_proj": ("attn_output", QType.F16),
    "mlp.gate_proj": ("ffn_gate", QType.Q8_0),
    "mlp.up_proj": ("ffn_up", QType.F32),
    "mlp.down_proj": ("ffn_down", QType.Q4_1),
    "input_layernorm": ("attn_norm", QType.F32),
    "post_attention_layernorm": ("ffn_norm", QType.F32),
}
TOP_TENSORS = {
    "model.embed_tokens": ("token_embd", QType.Q8_0),
    "model.norm": ("output_norm", QType.F32),
    "lm_head": ("output", QType.F16),
}


def tiny_vocab() -> list[str]:
    byte_tokens = sorted(ByteLevel.alphabet())
    merged = [merge.replace(" ", "") for merge in MERGES]
    return SPECIALS + byte_tokens + merged


def tiny_config(tied: bool) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tiny_vocab()),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        rms_norm_eps=RMS_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        max_position_embeddings=256,
        tie_word_embeddings=tied,
    )


def tiny_weights(tied: bool) -> dict[str, torch.Tensor]:
    """Random weights for every parameter; norms away from 1 so that swapping two would show."""
    generator = torch.Generator().manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(tied))
    weights = {}
    for name, param in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        center = 1.0 if name.endswith("norm.weight") else 0.0
        weights[name] = center + 0.1 * torch.randn(param.shape, generator=generator)
    return weights


def llama_cpp_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q/k rows (LlamaModel.permute)."""
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_layout(weights: dict[str, torch.Tensor]) -> dict[str, tuple[str, np.ndarray, QType]]:
    """GGUF name -> (HF name, array as llama.cpp would store it, storage type)."""
    stored = {}
    for hf_name, tensor in weights.items():
        module = hf_name.removesuffix(".weight")
        array = tensor.numpy()
        if module.startswith("model.layers."):
            _, _, layer, leaf = module.split(".", 3)
            gguf_leaf, qtype = BLOCK_TENSORS[leaf]
            gguf_name = f"blk.{layer}.{gguf_leaf}.weight"
            if gguf_leaf == "attn_q":
                array = llama_cpp_permute(array, HEADS)
            elif gguf_leaf == "attn_k":
                array = llama_cpp_permute(array, KV_HEADS)
        else:
            gguf_leaf, qtype = TOP_TENSORS[module]
            gguf_name = f"{gguf_leaf}.weight"
        stored[gguf_name] = (hf_name, array, qtype)
    return stored


def write_tiny_gguf(
    path: Path,
    weights: dict[str, torch.Tensor],
    architecture: str = "llama",
    extra_tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_name("tiny-llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(tiny_vocab()))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tiny_vocab())
    n_normal = len(tiny_vocab()) - len(SPECIALS)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * n_normal)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, (_, array, qtype) in gguf_layout(weights).items():
        writer.add_tensor(name, gguf.quants.quantize(array.astype(np.float32), qtype), raw_dtype=qtype)
    for name, array in (extra_tensors or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def converted(request, tmp_path_factory):
    """(original weights, GGUF path, converted folder) for a tiny Llama, tied or not."""
    tied = request.param
    root = tmp_path_factory.mktemp("tied" if tied else "untied")
    weights = tiny_weights(tied)
    gguf_path = write_tiny_gguf(root / "tiny-llama.gguf", weights)
    out_dir = convert_gguf_to_hf_folder(gguf_path, root / "hf")
    return weights, gguf_path, out_dir


def quantization_tolerance(qtype: QType, reference: torch.Tensor) -> float:
    """An upper bound on one element's rounding error for a tensor stored as ``qtype``."""
    spread = (reference.max() - reference.min()).item()
    return {
        QType.F32: 0.0,
        QType.F16: 1e-3 * reference.abs().max().item(),
        QType.Q8_0: reference.abs().max().item() / 127,
        QType.Q4_1: spread / 15,
    }[qtype]


# ---------------------------------------------------------------------------------------------
# The converted folder


def test_folder_holds_a_plain_hf_model(converted):
    _, _, out_dir = converted
    names = {p.name for p in out_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert temporary_dirs(out_dir) == []
    # safetensors writes 0600 on its own; the weights must be as readable as the rest
    assert (out_dir / "model.safetensors").stat().st_mode == (out_dir / "config.json").stat().st_mode


def test_weights_match_what_went_into_the_gguf(converted):
    weights, _, out_dir = converted
    written = load_file(out_dir / "model.safetensors")
    assert set(written) == set(weights)
    qtypes = {hf_name: qtype for hf_name, _, qtype in gguf_layout(weights).values()}
    for name, reference in weights.items():
        assert written[name].dtype == torch.float32
        assert written[name].shape == reference.shape, name
        tolerance = quantization_tolerance(qtypes[name], reference)
        torch.testing.assert_close(written[name], reference, rtol=0, atol=tolerance, msg=name)


def test_weights_equal_transformers_own_gguf_reading(converted):
    _, gguf_path, out_dir = converted
    reference = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).state_dict()
    written = load_file(out_dir / "model.safetensors")
    tied = "lm_head.weight" not in written
    assert set(reference) - set(written) == ({"lm_head.weight"} if tied else set())
    for name, tensor in written.items():
        assert torch.equal(tensor, reference[name]), name


def test_config_describes_the_model(converted):
    weights, _, out_dir = converted
    config = AutoConfig.from_pretrained(out_dir)
    assert config.model_type == "llama"
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.hidden_size, config.num_hidden_layers) == (HIDDEN, LAYERS)
    assert (config.num_attention_heads, config.num_key_value_heads) == (HEADS, KV_HEADS)
    assert config.intermediate_size == FFN
    assert config.vocab_size == len(tiny_vocab())
    assert config.rope_parameters["rope_theta"] == ROPE_THETA
    assert config.rms_norm_eps == pytest.approx(RMS_EPS)
    assert config.tie_word_embeddings == ("lm_head.weight" not in weights)


def test_tokenizer_and_generation_config_come_from_the_metadata(converted):
    _, _, out_dir = converted
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello there"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n"
    vocab = tiny_vocab()
    expected = [1, vocab.index("he"), vocab.index("ll"), vocab.index("o"), vocab.index("Ġthe"), 2]
    assert tokenizer("<|im_start|>hello the<|im_end|>").input_ids == expected
    generation = GenerationConfig.from_pretrained(out_dir)
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, 0)


def test_folder_loads_in_transformers_with_the_gguf_logits(converted):
    _, gguf_path, out_dir = converted
    model, info = AutoModelForCausalLM.from_pretrained(out_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    reference = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    input_ids = torch.tensor([[1, 10, 200, 260, 7, 2]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, reference(input_ids).logits, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Refusals, and no half-written folder


def test_unpermute_rotary_inverts_llama_cpp():
    weight = np.arange(8 * 3 * 5, dtype=np.float32).reshape(8 * 3, 5)
    assert np.array_equal(unpermute_rotary(llama_cpp_permute(weight, 3), 3), weight)


def test_unsupported_architecture_is_refused(tmp_path):
    gguf_path = write_tiny_gguf(tmp_path / "mamba.gguf", {}, architecture="mamba")
    with pytest.raises(ValueError, match="'mamba'"):
        convert_gguf_to_hf_folder(gguf_path, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mamba.gguf"]


def test_failed_conversion_leaves_no_folder(tmp_path):
    rope_freqs = {"rope_freqs.weight": np.ones(HIDDEN // HEADS // 2, dtype=np.float32)}
    gguf_path = write_tiny_gguf(tmp_path / "llama3.gguf", tiny_weights(tied=True), extra_tensors=rope_freqs)
    with pytest.raises(ValueError, match="rope_freqs"):
        convert_gguf_to_hf_folder(gguf_path, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama3.gguf"]


def test_existing_folder_is_not_overwritten(tmp_path):
    (tmp_path / "hf").mkdir()
    with pytest.raises(FileExistsError):
        convert_gguf_to_hf_folder(tmp_path / "missing.gguf", tmp_path / "hf")
