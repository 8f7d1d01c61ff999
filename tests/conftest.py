"""Shared test set-up: no network, Triton through its interpreter where there is no GPU.

TRITON_INTERPRET must be in the environment before any ``@triton.jit`` decorator
runs, so it is set here, before the tests import nbllm_kernels.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
