"""nbllm::int4_rows and nbllm::int8_rows (nbllm/quant/int4_rows.cpp): nbllm's products on quantized weights
with exact scales.

int4_rows reads torch's packed 4-bit values, int8_rows 8-bit values in its own layout, both with the
checkpoint's own float32 scales, so they are checked against the exact product of the quantized weight
(float64), against torch's kernel (whose scales and output are bfloat16; 8-bit weights there run as two
4-bit planes), and inside an engine against the engine with them switched off.
"""

import warnings

import pytest
import torch

from nbllm import LLM, SamplingParams, native
from nbllm.layers.quantized_linear import QuantizedLinear
from nbllm.quant import int4_rows
from nbllm.quant.groups import GroupQuant
from nbllm.quant.int4pack import exact_scales, int4_matmul, int8_layout, pack, rows_matmul

pytestmark = pytest.mark.skipif(not native.cpu_runs_kernels(),
                                reason="the row kernel needs AVX-512 BF16 (this CPU lacks it)")


def operands(quantized: GroupQuant):
    """(torch's packed weight, its scales_and_zeros, planes, our kernel's weight, its exact scales)."""
    packed, scales_and_zeros, planes = pack(quantized)
    ours = packed if quantized.bits <= 4 else int8_layout(quantized, packed.shape[0])
    return packed, scales_and_zeros, planes, ours, exact_scales(quantized, packed.shape[0])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9, 12, 64, 150])  # both paths, tiles of 4 and the rest, rows split over threads
def test_row_kernel_computes_the_exact_weights_product_to_float32_accuracy(bits, rows):
    assert int4_rows.rows_kernel_available()
    torch.manual_seed(rows + bits)
    quantized = GroupQuant.from_float(torch.randn(320, 576) * 0.05 + 0.01, bits)
    packed, scales_and_zeros, planes, weight, scales = operands(quantized)
    x = torch.randn(rows, 576)
    exact = x.to(torch.bfloat16).double() @ quantized.dequantize().double().T  # the activations as both kernels take them
    ours = rows_matmul(x, weight, scales, bits)
    theirs = int4_matmul(x, packed, scales_and_zeros, planes)
    assert ours.dtype == torch.float32 and theirs.dtype == torch.bfloat16
    scale = exact.abs().max().item()
    ours_error = (ours.double() - exact).abs().max().item() / scale
    theirs_error = (theirs.double() - exact).abs().max().item() / scale
    assert ours_error < 1e-5  # float32 sums of exact products
    assert theirs_error < 2e-2  # torch's kernel: bfloat16 scales, zero points and output
    assert ours_error < theirs_error / 10


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows", [2, 3, 7, 11, 150])  # on the fly (in chunks of 3), converted blocks, split rows
def test_a_rows_result_does_not_depend_on_the_other_rows(bits, rows):
    *_, weight, scales = operands(GroupQuant.from_float(torch.randn(128, 96), bits))
    x = torch.randn(rows, 96)
    together = rows_matmul(x, weight, scales, bits)
    for i in range(rows):
        alone = rows_matmul(x[i:i + 1], weight, scales, bits)
        assert torch.equal(alone[0], together[i])
    assert rows_matmul(x[:0], weight, scales, bits).shape == (0, 128)


def test_the_kernel_refuses_operands_it_was_not_written_for():
    assert int4_rows.rows_kernel_available()
    packed, _, _, _, scales = operands(GroupQuant.from_float(torch.randn(48, 64), 4))  # not blocks of 64
    assert scales is None  # exact_scales() gives none, so the loader leaves such a layer on torch's kernel
    assert int8_layout(GroupQuant.from_float(torch.randn(48, 64), 8), 48) is None
    x = torch.randn(1, 64).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="multiple of 64"):
        torch.ops.nbllm.int4_rows(x, packed, torch.zeros(1, 2, 2, 64))
    packed, scales_and_zeros, _, _, _ = operands(GroupQuant.from_float(torch.randn(64, 64), 4))
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.nbllm.int4_rows(x, packed, scales_and_zeros)  # torch's bfloat16 scales are not what it reads
    with pytest.raises(RuntimeError, match=r"int8_rows: the weight must be uint8 \[N, 64\]"):
        torch.ops.nbllm.int8_rows(x, packed, torch.zeros(1, 2, 2, 64))  # 4-bit values: [N, K / 2]


@pytest.mark.parametrize("bits", [4, 8])
def test_a_layer_keeps_only_the_buffers_its_kernel_reads(bits):
    weight = torch.randn(192, 128)
    layers = {}
    for available in (True, False):
        layer = QuantizedLinear(128, [192], bias=False, bits=bits)
        layer.load_shard(0, "weight", weight)  # the last piece: finalized at once
        layer.use_rows_kernel(available)
        layers[available] = layer
    ours, torchs = layers[True], layers[False]
    assert ours.rows_kernel and not torchs.rows_kernel
    assert ours.scales_and_zeros is None and ours.exact_scales is not None
    assert (ours.int8_weight is not None, ours.packed_weight is None) == (bits == 8, bits == 8)
    assert torchs.exact_scales is None and torchs.int8_weight is None and torchs.packed_weight is not None
    x = torch.randn(5, 128)
    exact = x.to(torch.bfloat16).double() @ GroupQuant.from_float(weight, bits).dequantize().double().T
    assert (ours(x).double() - exact).abs().max() < 1e-5 * exact.abs().max()
    assert (torchs(x).double() - exact).abs().max() < 2e-2 * exact.abs().max()


def top_two_gap(entries) -> float:
    first, second = sorted((entry.logprob for entry in entries.values()), reverse=True)[:2]
    return first - second


def test_engine_decodes_the_same_tokens_with_and_without_the_row_kernel(tiny_llama_path, monkeypatch):
    """Greedy tokens equal, or part only at a near tie (within 0.15 nats on both sides): torch's kernel rounds
    the group scales, zero points and outputs to bfloat16, which moves logprobs of this random tiny
    model by up to about 0.1."""
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2)
    prompts = ["Once upon a time", "The capital of", "def add(a, b):", "Hello", "A B C"]
    with LLM(str(tiny_llama_path), quantization="int4", num_kv_blocks=64, block_size=8) as llm:
        linears = [m for m in llm.llm_engine.runner.model.modules() if isinstance(m, QuantizedLinear)]
        assert linears and all(m.rows_kernel for m in linears)  # the tiny model's shapes are blocks of 64
        assert {m.planes for m in linears} == {1, 2}  # int4 layers, and the 8-bit lm_head on int8_rows
        with_kernel = llm.generate(prompts, greedy, use_tqdm=False)
        alone = [llm.generate(prompt, greedy, use_tqdm=False)[0] for prompt in prompts]
    monkeypatch.setenv(int4_rows.ENV_SWITCH, "0")
    int4_rows.rows_kernel_available.cache_clear()
    try:
        with LLM(str(tiny_llama_path), quantization="int4", num_kv_blocks=64, block_size=8) as llm:
            linears = [m for m in llm.llm_engine.runner.model.modules() if isinstance(m, QuantizedLinear)]
            assert not any(m.rows_kernel for m in linears)
            without = llm.generate(prompts, greedy, use_tqdm=False)
    finally:
        monkeypatch.undo()
        int4_rows.rows_kernel_available.cache_clear()
    gaps, equal = [], 0
    for ours, by_itself, theirs in zip(with_kernel, alone, without):
        # the same request alone or in a batch: the same arithmetic, the same outputs
        assert by_itself.outputs[0].token_ids == ours.outputs[0].token_ids
        assert by_itself.outputs[0].cumulative_logprob == ours.outputs[0].cumulative_logprob
        tokens, reference = ours.outputs[0].token_ids, theirs.outputs[0].token_ids
        parting = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), None)
        if parting is None:
            equal += 1
        else:
            for side in (ours, theirs):
                assert top_two_gap(side.outputs[0].logprobs[parting]) < 0.15
        gaps += [abs(a[t].logprob - b[t].logprob)
                 for t, a, b in zip(tokens[:parting], ours.outputs[0].logprobs, theirs.outputs[0].logprobs)]
    assert equal >= 2  # the random tiny model has many near ties; every parting above is one
    assert 0 < max(gaps) < 0.15


def test_a_failed_build_warns_and_leaves_torchs_kernel(monkeypatch, tmp_path):
    monkeypatch.setattr(int4_rows, "_library_path", lambda: tmp_path / "int4_rows.so")
    monkeypatch.setattr(int4_rows, "_op_loaded", lambda: False)  # as in a fresh process
    monkeypatch.setenv("CXX", "false")  # a compiler that always fails
    int4_rows.rows_kernel_available.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="int4 row kernel is not used"):
            assert int4_rows.rows_kernel_available() is False
    finally:
        monkeypatch.undo()
        int4_rows.rows_kernel_available.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert int4_rows.rows_kernel_available()  # the machine's own build, loaded again


def test_a_second_cache_folder_reuses_the_loaded_kernel(monkeypatch, tmp_path):
    assert int4_rows.rows_kernel_available()
    monkeypatch.setenv("NBLLM_CACHE_DIR", str(tmp_path))  # no build there: the process has the op
    int4_rows.rows_kernel_available.cache_clear()
    try:
        assert int4_rows.rows_kernel_available()
        assert not (tmp_path / "extensions").exists()
    finally:
        int4_rows.rows_kernel_available.cache_clear()


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(int4_rows.ENV_SWITCH, "0")
    int4_rows.rows_kernel_available.cache_clear()
    try:
        assert int4_rows.rows_kernel_available() is False
    finally:
        int4_rows.rows_kernel_available.cache_clear()
