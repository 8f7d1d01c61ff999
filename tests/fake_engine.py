"""A fake model runner and tokenizer: the engine's scheduling and streaming logic without weights.

FakeRunner "predicts" the next token of a sequence as a pure function of its last
token (next = (last * 7 + 3) % vocab), so a sequence's tokens do not depend on its
batch mates, on chunking or on preemption, exactly what the real engine promises.
It records every SchedulerOutput it was asked to run. ByteTokenizer maps characters
to ids by their code point (below the vocabulary size).
"""

from __future__ import annotations

import torch

from nbllm.config import EngineConfig
from nbllm.engine.llm_engine import LLMEngine
from nbllm.engine.step_result import StepResult

VOCAB = 128
EOS = 2


def next_token(last: int) -> int:
    return (last * 7 + 3) % VOCAB


class FakeRunner:
    device = torch.device("cpu")
    vocab_size = VOCAB

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.steps = []  # the SchedulerOutputs run, in order
        self.released = False
        self.asleep = set()  # of "weights", "kv_cache"

    @property
    def is_sleeping(self):
        return bool(self.asleep)

    def sleep(self, level):
        self.asleep = {"kv_cache", "weights"} if level == 2 else {"kv_cache"}

    def wake_up(self, tags):
        self.asleep -= set(tags or ("weights", "kv_cache"))

    def execute(self, out, rows):
        self.steps.append(out)
        results = {}
        for item in out.scheduled:
            request = item.request
            result = StepResult()
            if item.samples_this_step:
                assert request.request_id in rows
                token = next_token(request.all_token_ids[-1])
                result.token_id, result.logprob = token, -0.5
                result.top_logprobs = ([token], [-0.5], 1)
            results[request.request_id] = result
        return results

    def release(self):
        self.released = True


class ByteTokenizer:
    eos_token_id = EOS
    chat_template = None

    def encode(self, text, add_special_tokens=True):
        return [ord(c) % VOCAB for c in text]

    def decode(self, ids, skip_special_tokens=True, spaces_between_special_tokens=True):
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == EOS))


def fake_engine(num_blocks: int = 64, block_size: int = 4, max_model_len: int = 64, **config) -> LLMEngine:
    """An LLMEngine around FakeRunner and ByteTokenizer (no files, no weights)."""
    engine_config = EngineConfig(block_size=block_size, **config)
    return LLMEngine(engine_config, FakeRunner(num_blocks), ByteTokenizer(), max_model_len, frozenset({EOS}))


def expected_tokens(prompt_ids: list[int], count: int) -> list[int]:
    tokens, last = [], prompt_ids[-1]
    for _ in range(count):
        last = next_token(last)
        tokens.append(last)
    return tokens
