"""Shared test set-up: no network, Triton through its interpreter where there is no GPU.

TRITON_INTERPRET must be in the environment before any ``@triton.jit`` decorator
runs, so it is set here, before the tests import nbllm_kernels (kernels/nbllm_kernels).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NBLLM_COMPILE", "0")  # no torch.compile unless a test asks (compilation_config=3)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:  # float32 comparisons on a GPU need IEEE products, not TF32
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory):
    """A tiny random Llama (GQA 4/2) with an offline BPE tokenizer and ChatML template."""
    from tiny_models import make_tiny_model

    return make_tiny_model("LlamaForCausalLM", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_llm(tiny_llama_path):
    """One shared engine on the tiny Llama (tests must leave it idle and all blocks free)."""
    from nbllm import LLM

    llm = LLM(str(tiny_llama_path), num_kv_blocks=256, block_size=8)
    yield llm
    llm.shutdown()
