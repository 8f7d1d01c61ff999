"""Quantized weights on the CPU (nbllm/quant, nbllm/layers/quantized_linear.py), on tiny models.

The stated tolerance: a quantized product equals the product with the dequantized float32 weight
within ``2 ** -7 * (|x| @ |W|.T)`` element-wise. It covers the three roundings of the bfloat16
kernel, each at most 2 ** -9 relative: the activations, the group scales and the output. The
weights themselves are exact: GGUF blocks decode to the values the ``gguf`` package dequantizes,
bit for bit.
"""

import numpy as np
import pytest
import test_gguf_convert as tiny_gguf
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QType
from gguf.quants import dequantize
from safetensors.torch import save_file

from nbllm import LLM, SamplingParams
from nbllm.config import EngineConfig
from nbllm.engine.model_runner import build_model
from nbllm.layers.quantized_linear import DENSE_MIN_ROWS, DenseProducts, QuantizedEmbedding, QuantizedLinear
from nbllm.loader import load_hf_config, resolve_model_path, weight_files
from nbllm.quant import int4_rows, loading, packed_cache
from nbllm.quant.gguf_blocks import decode
from nbllm.quant.groups import GroupQuant
from nbllm.quant.int4pack import int4_matmul, pack
from nbllm.quant.loading import build_quantized_model, resolve_quantization

RELATIVE_TOLERANCE = 2.0 ** -7
NATIVE_TYPES = (QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1, QType.Q8_0, QType.Q4_K, QType.Q5_K)
# Every natively decoded type that gguf can write appears in the tiny GGUF model below.
TINY_TYPES = {
    "self_attn.q_proj": ("attn_q", QType.Q4_0),
    "self_attn.k_proj": ("attn_k", QType.Q8_0),
    "self_attn.v_proj": ("attn_v", QType.Q4_1),
    "self_attn.o_proj": ("attn_output", QType.Q5_0),
    "mlp.gate_proj": ("ffn_gate", QType.Q5_1),
    "mlp.up_proj": ("ffn_up", QType.Q4_1),
    "mlp.down_proj": ("ffn_down", QType.Q8_0),
}


def assert_within_tolerance(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, extra: float = 0.0) -> None:
    """`out` equals x @ weight.T within the stated tolerance (plus `extra` * |x| @ 1, for requantized weights)."""
    reference = x @ weight.T
    bound = RELATIVE_TOLERANCE * (x.abs() @ weight.abs().T) + extra * x.abs().sum(-1, keepdim=True) + 1e-6
    excess = ((out - reference).abs() - bound).max().item()
    assert excess <= 0, f"off by {excess:.3g} beyond the tolerance"


# ----------------------------------------------------------------------------- blocks and kernels
@pytest.mark.parametrize("qtype", NATIVE_TYPES, ids=lambda t: t.name)
def test_gguf_blocks_decode_bit_exact(qtype):
    rng = np.random.default_rng(int(qtype))
    block_weights, block_bytes = GGML_QUANT_SIZES[qtype]
    rows, cols = 6, 512
    raw = rng.integers(0, 256, (rows, cols // block_weights * block_bytes), dtype=np.uint8)
    blocks = raw.reshape(-1, block_bytes)
    halves = 1 if qtype in (QType.Q4_0, QType.Q5_0, QType.Q8_0) else 2  # fp16 d (and m or dmin) lead each block
    blocks[:, :2 * halves] = rng.uniform(-0.1, 0.1, (len(blocks), halves)).astype(np.float16).view(np.uint8)
    decoded = decode(raw, qtype, (rows, cols))
    assert int(decoded.values.max()) < 2 ** decoded.bits
    assert np.array_equal(decoded.dequantize().numpy(), dequantize(raw, qtype).reshape(rows, cols))


def test_types_without_groups_of_32_are_left_to_the_caller():
    raw = np.zeros((2, 210), dtype=np.uint8)  # one Q6_K super-block a row (16-weight sub-blocks)
    assert decode(raw, QType.Q6_K, (2, 256)) is None


@pytest.mark.parametrize("bits", [4, 8])
def test_quantizing_a_float_weight_errs_by_at_most_half_a_step(bits):
    weight = torch.randn(64, 128)
    quantized = GroupQuant.from_float(weight, bits)
    steps = quantized.scale.repeat_interleave(32, dim=1)
    assert ((quantized.dequantize() - weight).abs() <= steps / 2 + 1e-6).all()


@pytest.mark.parametrize("bits", [4, 5, 8])
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_int4_kernel_matches_the_dequantized_weight(bits, rows):
    torch.manual_seed(bits)
    quantized = GroupQuant.from_float(torch.randn(192, 576) * 0.05 + 0.01, bits)
    packed, scales_and_zeros, planes = pack(quantized)
    assert planes == (1 if bits == 4 else 2)
    x = torch.randn(rows, 576)
    assert_within_tolerance(int4_matmul(x, packed, scales_and_zeros, planes).float(), x, quantized.dequantize())


@pytest.mark.parametrize("bits", [4, 8])
def test_embedding_rows_are_dequantized_exactly(bits):
    quantized = GroupQuant.from_float(torch.randn(100, 64), bits)
    embedding = QuantizedEmbedding(100, 64, bits)
    embedding.load_shard(0, "weight", quantized)
    embedding.finalize()
    ids = torch.tensor([[3, 99, 0], [3, 7, 50]])
    assert torch.equal(embedding(ids), quantized.dequantize()[ids])


# ----------------------------------------------------------------------------- a tiny GGUF model
@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny_gguf_model(request, tmp_path_factory):
    """(converted folder, GGUF path) of a tiny Llama whose matrices use every type in TINY_TYPES."""
    tied = request.param
    root = tmp_path_factory.mktemp("quantized-tied" if tied else "quantized-untied")
    with pytest.MonkeyPatch.context() as patch:
        for leaf, layout in TINY_TYPES.items():
            patch.setitem(tiny_gguf.BLOCK_TENSORS, leaf, layout)
        gguf_path = tiny_gguf.write_tiny_gguf(root / "tiny.gguf", tiny_gguf.tiny_weights(tied))
    return resolve_model_path(str(gguf_path)), gguf_path


def test_gguf_model_layers_match_the_dequantized_float32_model(tiny_gguf_model):
    folder, _ = tiny_gguf_model
    hf_config = load_hf_config(folder)
    quantized = build_quantized_model(hf_config, folder, "gguf")
    reference = build_model(hf_config, folder, torch.float32, torch.device("cpu"))  # the GGUF dequantized
    reference_modules = dict(reference.named_modules())
    torch.manual_seed(0)
    checked = 0
    for name, module in quantized.named_modules():
        if isinstance(module, QuantizedLinear):
            weight = reference_modules[name].weight.detach()
            x = torch.randn(5, module.in_features)
            # lm_head of the untied model is stored as F16, so requantized to 8 bits: half a step more
            extra = 0.0 if name != "lm_head" or hf_config.tie_word_embeddings else weight.abs().max().item() / 255
            assert_within_tolerance(module(x), x, weight, extra)
            checked += 1
        elif isinstance(module, QuantizedEmbedding):
            ids = torch.arange(module.num_embeddings)
            assert torch.equal(module(ids), reference_modules[name].weight.detach())
            checked += 1
    assert checked == 4 * hf_config.num_hidden_layers + 2  # qkv, o, gate_up, down; embedding and lm_head


def test_gguf_loads_quantized_by_default_and_float32_on_request(tiny_gguf_model):
    _, gguf_path = tiny_gguf_model
    prompt = {"prompt_token_ids": [5, 17, 40, 33, 90, 12, 7, 61]}
    params = SamplingParams(max_tokens=1, prompt_logprobs=0)
    logprobs = {}
    for label, kwargs in (("quantized", {}), ("float32", {"dtype": "float32"})):
        llm = LLM(str(gguf_path), num_kv_blocks=32, block_size=8, **kwargs)
        try:
            model = llm.llm_engine.runner.model
            assert isinstance(model.lm_head, QuantizedLinear) == (label == "quantized")
            out = llm.generate(prompt, params, use_tqdm=False)[0]
        finally:
            llm.shutdown()
        logprobs[label] = [next(iter(entry.values())).logprob for entry in out.prompt_logprobs[1:]]
    # the per-layer roundings (2 ** -9 each) add up over the layers: 0.03 measured, at most 0.5% relative
    assert logprobs["quantized"] == pytest.approx(logprobs["float32"], rel=0.01)


# ----------------------------------------------------------------------------- a float checkpoint
@pytest.mark.parametrize("bits", [8, 4])
def test_float_checkpoint_quantized_on_load(tiny_llama_path, bits):
    hf_config = load_hf_config(tiny_llama_path)
    quantized = build_quantized_model(hf_config, tiny_llama_path, f"int{bits}")
    reference = dict(build_model(hf_config, tiny_llama_path, torch.float32, torch.device("cpu")).named_modules())
    torch.manual_seed(1)
    linears = [(n, m) for n, m in quantized.named_modules() if isinstance(m, QuantizedLinear)]
    assert len(linears) == 4 * hf_config.num_hidden_layers + 1
    assert quantized.lm_head.planes == 2  # the vocabulary matrices keep 8 bits, also under int4
    for name, module in linears:
        weight = reference[name].weight.detach()
        step = GroupQuant.from_float(weight, bits).scale.max().item()
        x = torch.randn(3, module.in_features)
        assert_within_tolerance(module(x), x, weight, extra=step / 2)


def test_quantization_argument():
    with pytest.raises(ValueError, match="quantization"):
        EngineConfig(quantization="fp8")
    assert EngineConfig(quantization="int4").quantization == "int4"


def test_quantization_choice(tiny_llama_path, tiny_gguf_model):
    folder, _ = tiny_gguf_model
    cpu = torch.device("cpu")
    assert resolve_quantization(None, "auto", folder, cpu) == "gguf"
    assert resolve_quantization(None, "float32", folder, cpu) is None  # dtype asked for explicitly
    assert resolve_quantization(None, "auto", folder, torch.device("cuda")) is None
    assert resolve_quantization(None, "auto", tiny_llama_path, cpu) is None
    assert resolve_quantization("int8", "auto", tiny_llama_path, cpu) == "int8"
    with pytest.raises(ValueError, match="needs a .gguf model"):
        resolve_quantization("gguf", "auto", tiny_llama_path, cpu)
    with pytest.raises(ValueError, match="CPUs only"):
        resolve_quantization("int4", "auto", tiny_llama_path, torch.device("cuda"))
    with pytest.raises(ValueError, match="dtype"):
        resolve_quantization("int4", "bfloat16", tiny_llama_path, cpu)


# ----------------------------------------------------------------------------- dense copies
def test_dense_copy_serves_products_of_many_rows_once_turned_on():
    torch.manual_seed(0)
    quant = GroupQuant.from_float(torch.randn(80, 96), 4)
    plain, dense = QuantizedLinear(96, [80], bias=False, bits=4), QuantizedLinear(96, [80], bias=False, bits=4)
    dense.keep_dense = True
    for layer in (plain, dense):
        layer.load_shard(0, "weight", quant)  # finalized on its last piece
    exact = quant.dequantize()
    assert plain.dense_weight is None and torch.equal(dense.dense_weight, exact.to(torch.bfloat16))
    small, many = torch.randn(DENSE_MIN_ROWS - 1, 96), torch.randn(DENSE_MIN_ROWS, 96)
    assert torch.equal(dense(many), plain(many))  # kept, not used until turned on
    switch = DenseProducts(torch.nn.Sequential(plain, dense))
    assert switch.layers == [dense]
    switch.set(True)
    assert torch.equal(dense(small), plain(small))
    out = dense(many)
    assert torch.equal(out, F.linear(many.bfloat16(), exact.bfloat16()).float())
    assert not torch.equal(out, plain(many))
    assert_within_tolerance(out, many, exact)
    switch.set(False)
    assert torch.equal(dense(many), plain(many))


def test_dense_copies_by_default_need_bf16_instructions_and_fit_the_budget(monkeypatch):
    linears = [QuantizedLinear(64, [32], bias=False, bits=4), QuantizedLinear(32, [64], bias=False, bits=4)]
    copies = 2 * 2 * 64 * 32  # bytes
    monkeypatch.setattr(loading, "cpu_has_bf16_dot_products", lambda: True)
    monkeypatch.setattr(loading, "DENSE_COPIES_MAX_BYTES", copies)
    monkeypatch.setattr(int4_rows, "rows_kernel_available", lambda: False)
    assert loading.wants_dense_copies(linears)
    # nbllm's own int4 kernel is as fast as the copies and exact: no copies, unless oneDNN has AMX tiles
    monkeypatch.setattr(int4_rows, "rows_kernel_available", lambda: True)
    monkeypatch.setattr(loading, "cpu_has_amx", lambda: False)
    assert not loading.wants_dense_copies(linears)
    monkeypatch.setattr(loading, "cpu_has_amx", lambda: True)
    assert loading.wants_dense_copies(linears)
    monkeypatch.setattr(loading, "DENSE_COPIES_MAX_BYTES", copies - 1)
    assert not loading.wants_dense_copies(linears)
    monkeypatch.setattr(loading, "DENSE_COPIES_MAX_BYTES", copies)
    monkeypatch.setattr(loading, "cpu_has_bf16_dot_products", lambda: False)
    assert not loading.wants_dense_copies(linears)
    assert not loading.wants_dense_copies([])


def test_engine_uses_dense_copies_only_for_large_decode_batches(tiny_llama_path):
    args = dict(quantization="int8", num_kv_blocks=128, block_size=8, compilation_config=0)
    greedy = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2, prompt_logprobs=1)
    prompts = [{"prompt_token_ids": [(7 * i + j) % 200 + 3 for i in range(20)]} for j in range(DENSE_MIN_ROWS)]
    with LLM(str(tiny_llama_path), dense_weight_copies=False, **args) as plain:
        expected = plain.generate(prompts, greedy, use_tqdm=False)
    with LLM(str(tiny_llama_path), dense_weight_copies=True, **args) as llm:
        linears = [m for m in llm.llm_engine.runner.model.modules() if isinstance(m, QuantizedLinear)]
        assert linears and all(m.dense_weight is not None for m in linears)
        alone = llm.generate(prompts[0], greedy, use_tqdm=False)[0]
        batch = llm.generate(prompts, greedy, use_tqdm=False)
        assert llm.llm_engine.runner.dense_products.enabled  # the batch's decode steps had DENSE_MIN_ROWS sequences
    # one request alone never has DENSE_MIN_ROWS rows in a decode step: the int4 kernel throughout
    assert alone.outputs[0].cumulative_logprob == expected[0].outputs[0].cumulative_logprob
    gaps = []
    for ours, theirs in zip(batch, expected):
        # prefills run on the int4 kernel whatever the batch: prompt logprobs and first tokens equal
        assert ours.prompt_logprobs == theirs.prompt_logprobs
        assert ours.outputs[0].logprobs[0] == theirs.outputs[0].logprobs[0]
        tokens, reference = ours.outputs[0].token_ids, theirs.outputs[0].token_ids
        parting = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), len(tokens))
        for side in (ours, theirs) if parting < len(tokens) else ():  # a parting must be a near tie
            best = sorted((entry.logprob for entry in side.outputs[0].logprobs[parting].values()), reverse=True)
            assert best[0] - best[1] < 0.3
        gaps += [abs(a[t].logprob - b[t].logprob)
                 for t, a, b in zip(tokens[1:parting], ours.outputs[0].logprobs[1:], theirs.outputs[0].logprobs[1:])]
    print(f"decode logprobs of a batch of {DENSE_MIN_ROWS}, dense copies against the int4 kernel: "
          f"mean gap {sum(gaps) / len(gaps):.4f}, largest {max(gaps):.4f}")
    assert 0 < max(gaps) < 0.3 and sum(gaps) / len(gaps) < 0.05


def test_packed_weights_are_cached_beside_the_converted_folder(tiny_gguf_model):
    folder, _ = tiny_gguf_model
    hf_config = load_hf_config(folder)
    cached = packed_cache.cache_file(folder)
    cached.unlink(missing_ok=True)
    built = build_quantized_model(hf_config, folder, "gguf")
    assert cached.is_file() and cached not in weight_files(folder)  # never read as a checkpoint shard
    restored = build_quantized_model(hf_config, folder, "gguf")
    for (name, a), (_, b) in zip(built.state_dict(keep_vars=True).items(), restored.state_dict(keep_vars=True).items()):
        assert torch.equal(a, b), name
    for name, module in built.named_modules():
        if isinstance(module, QuantizedLinear):
            x = torch.randn(2, module.in_features)
            assert torch.equal(module(x), restored.get_submodule(name)(x)), name
    # a file that does not fit the model (here: another model's) is rebuilt over, not trusted
    save_file({"unrelated": torch.zeros(1)}, cached)
    rebuilt = build_quantized_model(hf_config, folder, "gguf")
    x = torch.randn(2, built.lm_head.in_features)
    assert torch.equal(rebuilt.lm_head(x), built.lm_head(x))
    assert packed_cache.restore(build_quantized_model(hf_config, folder, "gguf"), cached)
    # dense copies: a file without them is rebuilt with them; a model that wants none leaves them unread
    with_copies = build_quantized_model(hf_config, folder, "gguf", dense_copies=True)
    assert with_copies.lm_head.dense_weight is not None
    restored = build_quantized_model(hf_config, folder, "gguf", dense_copies=True)
    assert torch.equal(restored.lm_head.dense_weight, with_copies.lm_head.dense_weight)
    assert build_quantized_model(hf_config, folder, "gguf").lm_head.dense_weight is None
