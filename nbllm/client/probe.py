"""What a server can do, asked once when a RemoteLLM connects.

OpenAI-compatible servers differ: vLLM and `nbllm serve` have /metrics, /tokenize and
token ids; llama.cpp's server has its own /tokenize, no vLLM metrics and one choice
per request; others have less. `probe` asks: the model list (the model's name and
context window, and who serves it: `owned_by`), /metrics, /tokenize and /detokenize,
and one tiny completion (one token, n=2, with logprobs and token ids) to see whether
the server returns several choices, logprobs and token ids (logprobs count only with
token ids: nbllm keys them by id, and llama.cpp's name tokens by their text). The answers become
EngineCapabilities and a ServerInfo that RemoteLLM keeps, so that none of its
properties does network I/O later (`isinstance(x, EngineClient)` reads them all).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

import httpx

from nbllm.client.http import RemoteError, RetryingClient, RowError
from nbllm.protocol import EngineCapabilities

VLLM_COMPATIBLE = ("vllm", "nbllm")  # owned_by values of servers that take vLLM's extra sampling fields
# What each missing capability means, for status lines.
MISSING = {"metrics": "metrics (no vLLM /metrics)", "tokenizer": "tokenizer (no /tokenize and /detokenize)",
           "logprobs": "logprobs", "token_ids": "token ids (counts come from usage)",
           "beam_search": "beam search", "block_states": "KV block states", "beam_tree": "beam trees"}


@dataclass(frozen=True)
class ServerInfo:
    model: str
    max_model_len: Optional[int]
    owned_by: str
    capabilities: EngineCapabilities
    multiple_choices: bool  # answers n > 1 with n choices (else RemoteLLM asks n times)

    @property
    def vllm_compatible(self) -> bool:
        return self.owned_by in VLLM_COMPATIBLE

    @property
    def unavailable(self) -> list[str]:
        """What this server cannot do, in words (see MISSING)."""
        caps = self.capabilities
        return [MISSING[f.name] for f in fields(caps) if not getattr(caps, f.name)]


def probe(http: RetryingClient, model: Optional[str]) -> ServerInfo:
    """Ask the server what it offers; RemoteError if it cannot be reached, refuses the key, or lists no model."""
    cards = _json(http.call("GET", "/v1/models")).get("data") or []
    if not isinstance(cards, list) or not (cards or model):
        raise RemoteError(f"{http.base_url}/v1/models lists no model")
    named = [c for c in cards if isinstance(c, dict) and c.get("id") == model]
    if model and cards and not named:
        served = [c.get("id") for c in cards if isinstance(c, dict)]
        raise RemoteError(f"{http.base_url} does not serve the model {model!r}; it serves {served}", 404)
    card = named[0] if named else ({"id": model} if model else cards[0])
    if not isinstance(card, dict) or not isinstance(card.get("id"), str):
        raise RemoteError(f"{http.base_url}/v1/models answered an unexpected model list: {cards[:3]!r}")
    name = card["id"]
    max_len = card.get("max_model_len")
    logprobs, token_ids, several = _sample(http, name)
    capabilities = EngineCapabilities(metrics=_has_metrics(http), block_states=False,
                                      tokenizer=_has_tokenizer(http, name), beam_search=False, beam_tree=False,
                                      logprobs=logprobs, token_ids=token_ids)
    return ServerInfo(name, max_len if isinstance(max_len, int) else None, str(card.get("owned_by") or ""),
                      capabilities, several)


def _json(response: httpx.Response) -> dict:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _answer(http: RetryingClient, method: str, path: str, body: Optional[dict] = None) -> Optional[dict]:
    """The JSON of a successful answer, or None when the server does not offer this (a wrong key still raises)."""
    try:
        return _json(http.send(method, path, body))
    except RemoteError as exc:
        if exc.status in (401, 403):
            raise
        return None
    except RowError:
        return None


def _has_metrics(http: RetryingClient) -> bool:
    try:
        text = http.send("GET", "/metrics").text
    except RemoteError as exc:
        if exc.status in (401, 403):
            raise
        return False
    except RowError:
        return False
    return "vllm:" in text


def _has_tokenizer(http: RetryingClient, model: str) -> bool:
    tokens = (_answer(http, "POST", "/tokenize", {"model": model, "prompt": "Hello world"}) or {}).get("tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, int) for t in tokens):
        return False  # llama.cpp's /tokenize reads `content`: it tokenizes nothing here
    text = (_answer(http, "POST", "/detokenize", {"model": model, "tokens": tokens}) or {}).get("prompt")
    return isinstance(text, str) and "Hello" in text


def _sample(http: RetryingClient, model: str) -> tuple[bool, bool, bool]:
    """(logprobs, token ids, several choices) from one completion of one token, n=2."""
    body = {"model": model, "prompt": "Hello", "max_tokens": 1, "n": 2, "temperature": 1.0, "logprobs": 1,
            "return_token_ids": True, "return_tokens_as_token_ids": True}
    choices = (_answer(http, "POST", "/v1/completions", body) or {}).get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False, False, False
    first: dict[str, Any] = choices[0]
    logprobs = first.get("logprobs") if isinstance(first.get("logprobs"), dict) else {}
    tokens = logprobs.get("tokens") or []
    token_ids = isinstance(first.get("token_ids"), list) or (
        bool(tokens) and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens))
    # Logprobs are keyed by token id: llama.cpp's, keyed by token text alone, cannot be passed on.
    return bool(tokens) and token_ids, token_ids, len(choices) >= 2
