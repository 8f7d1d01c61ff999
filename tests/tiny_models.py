"""Tiny randomly initialised Hugging Face models, saved to a folder with an offline tokenizer.

Used by parity tests: transformers' own model code is the reference our models
must match on the same weights. Built from a byte-level BPE trained on a few
sentences, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "Once upon a time there was a little model that lived in a notebook.",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "def add(a, b):\n    return a + b\n",
    "Paged attention stores keys and values in fixed size blocks.",
    "Héllo wörld! Ünïcode characters: 日本語, emojis 🙂🚀 and more.",
] * 4

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# The conversation formats of the real checkpoints' own templates, written compactly, with the
# turn markers they add as special tokens. Other architectures keep CHATML_TEMPLATE.
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n'"
    " + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
GEMMA3_TEMPLATE = (  # Gemma 3 folds a system message into the first user turn
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else "
    "message['role']) + '\n' + (prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
SMOLLM3_TEMPLATE = (  # ChatML with a metadata system turn; enable_thinking=False opens an empty think block
    "{% set think = enable_thinking if enable_thinking is defined else true %}"
    "<|im_start|>system\n## Metadata\n\nReasoning Mode: {{ '/think' if think else '/no_think' }}\n\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% endif %}<|im_end|>\n"
    "{% for message in messages if message['role'] != 'system' %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if not think %}<think>\n\n</think>\n{% endif %}"
    "{% endif %}"
)
CHAT_FORMATS = {
    "Gemma2ForCausalLM": (GEMMA2_TEMPLATE, ["<start_of_turn>", "<end_of_turn>"]),
    "Gemma3ForCausalLM": (GEMMA3_TEMPLATE, ["<start_of_turn>", "<end_of_turn>"]),
    "Phi3ForCausalLM": (PHI3_TEMPLATE, ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]),
    "SmolLM3ForCausalLM": (SMOLLM3_TEMPLATE, ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]),
}
NORM_NOISE_ARCHS = ("Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM", "SmolLM3ForCausalLM")


def build_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_config(arch: str, vocab_size: int, **overrides):
    import transformers

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        cfg_cls = {"LlamaForCausalLM": transformers.LlamaConfig, "MistralForCausalLM": transformers.MistralConfig,
                   "Qwen2ForCausalLM": transformers.Qwen2Config, "Qwen3ForCausalLM": transformers.Qwen3Config}[arch]
        kwargs = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
                      rms_norm_eps=1e-5)
        if arch == "Qwen3ForCausalLM":
            kwargs["head_dim"] = 16
        if arch == "MistralForCausalLM":
            kwargs["sliding_window"] = None
    elif arch in ("Gemma2ForCausalLM", "Gemma3ForCausalLM"):
        # head_dim 16 with query_pre_attn_scalar 24: the score scale is not head_dim ** -0.5
        kwargs = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=256, query_pre_attn_scalar=24,
                      sliding_window=8, layer_types=["sliding_attention", "full_attention"], rms_norm_eps=1e-6)
        if arch == "Gemma2ForCausalLM":
            cfg_cls = transformers.Gemma2Config
            kwargs.update(attn_logit_softcapping=4.0, final_logit_softcapping=3.0)
        else:
            cfg_cls = transformers.Gemma3TextConfig
            kwargs.update(rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, final_logit_softcapping=3.0)
    elif arch == "Phi3ForCausalLM":
        cfg_cls = transformers.Phi3Config
        kwargs = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, original_max_position_embeddings=256,
                      sliding_window=24, tie_word_embeddings=False, rms_norm_eps=1e-5)
    elif arch == "SmolLM3ForCausalLM":
        cfg_cls = transformers.SmolLM3Config
        kwargs = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, no_rope_layer_interval=2,
                      rms_norm_eps=1e-6)  # layers 1 and 3 are NoPE layers
    elif arch == "GPT2LMHeadModel":
        cfg_cls = transformers.GPT2Config
        kwargs = dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)
    elif arch == "OPTForCausalLM":
        cfg_cls = transformers.OPTConfig
        kwargs = dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=256, word_embed_proj_dim=64)
        common.update(bos_token_id=1, eos_token_id=0, pad_token_id=2)
    else:
        raise ValueError(arch)
    kwargs.update(common)
    kwargs.update(overrides)
    config = cfg_cls(**kwargs)
    config.architectures = [arch]
    return config


def make_tiny_model(arch: str, folder: Path, seed: int = 0, **overrides) -> Path:
    """Save a random tiny `arch` model plus tokenizer to `folder`; returns the folder."""
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer()
    if arch in CHAT_FORMATS:
        tokenizer.chat_template, markers = CHAT_FORMATS[arch]
        tokenizer.add_special_tokens({"additional_special_tokens": markers})
    config = tiny_config(arch, len(tokenizer), **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    with torch.no_grad():  # larger weights than the default init give peakier, less tie-prone logits
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.15)
            elif "bias" in name:
                param.normal_(0.0, 0.05)
            elif arch in NORM_NOISE_ARCHS:  # norm weights off their init: Gemma's (1 + w) must differ from w
                param.add_(torch.randn_like(param), alpha=0.1)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
