"""The plain PyTorch attention backend: the CPU path, and the reference the Triton kernels are tested against.

It implements nbllm.layers.attention_backend's AttentionBackend with
F.scaled_dot_product_attention only, so it runs wherever torch runs.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from nbllm.layers.attention_backend import AttentionMetadata, KVCache
from nbllm.layers.paged_attention import can_attend_in_place


class TorchAttentionBackend:
    """The plain PyTorch path: the CPU implementation and the reference for the kernels.

    Decodes are batched. On CPUs where nbllm's paged decode attention kernel runs
    (nbllm.layers.paged_attention: float32 caches, no soft cap) they attend in place in the
    cache; otherwise their contexts are gathered into a padded [B, L] slot index (padding
    points at the zeroed block 0 and is masked out) and attended in one SDPA call.
    Prefills run one sequence at a time; a prefill with no cached context attends to
    its own fresh keys without touching the cache. A sliding window only narrows the
    masks (the whole context stays gathered); soft-capped scores take SDPA's math by hand.
    """

    name = "torch"
    supports_cuda_graphs = False

    def prepare(self, meta: AttentionMetadata) -> None:
        device = meta.slot_mapping.device
        nd = meta.num_decodes
        if nd:
            lens = meta.seq_lens[:nd].to(torch.int64)
            max_len = max(meta.seq_lens_cpu[:nd])
            pos = torch.arange(max_len, device=device)
            block_idx = meta.block_tables[:nd, : -(-max_len // meta.block_size)].to(torch.int64)
            slots = block_idx[:, pos // meta.block_size] * meta.block_size + pos % meta.block_size
            valid = pos[None, :] < lens[:, None]  # [Bd, L]
            meta.extras["decode_lens"] = lens
            meta.extras["decode_slots"] = torch.where(valid, slots, torch.zeros_like(slots))
            meta.extras["decode_mask"] = valid[:, None, None, :]  # [Bd, 1, 1, L]
            meta.extras["decode_distance"] = lens[:, None] - pos[None, :]  # [Bd, L]: 1 for the newest key
        prefill_slots = []
        for b in range(nd, meta.num_seqs):
            q_len, s_len = meta.query_lens_cpu[b], meta.seq_lens_cpu[b]
            if q_len == s_len:
                prefill_slots.append(None)
                continue
            pos = torch.arange(s_len, device=device)
            blocks = meta.block_tables[b, pos // meta.block_size].to(torch.int64)
            prefill_slots.append(blocks * meta.block_size + pos % meta.block_size)
        meta.extras["prefill_slots"] = prefill_slots

    @staticmethod
    def store(k: torch.Tensor, v: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata) -> None:
        """Write this step's keys and values ([T, Hkv, D]) into their cache slots."""
        key_cache, value_cache = kv_cache
        num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
        key_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
        value_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)

    @staticmethod
    def decode_mask(meta: AttentionMetadata, sliding_window: Optional[int]) -> torch.Tensor:
        """[Bd, 1, 1, L]: which of the gathered context slots (meta.extras["decode_slots"]) each decode sees."""
        mask = meta.extras["decode_mask"]
        if sliding_window is None:
            return mask
        key = f"decode_mask_window_{sliding_window}"  # the last sliding_window tokens: built once per step
        if key not in meta.extras:
            in_window = meta.extras["decode_distance"] <= sliding_window
            meta.extras[key] = mask & in_window[:, None, None, :]
        return meta.extras[key]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: KVCache,
                meta: AttentionMetadata, scale: float, sliding_window: Optional[int] = None,
                logits_soft_cap: Optional[float] = None) -> torch.Tensor:
        self.store(k, v, kv_cache, meta)
        key_cache, value_cache = kv_cache
        num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
        k_flat = key_cache.view(-1, num_kv_heads, head_dim)  # [slots, Hkv, D]
        v_flat = value_cache.view(-1, num_kv_heads, head_dim)

        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd and can_attend_in_place(q, key_cache, logits_soft_cap):
            out[:nd] = torch.ops.nbllm.paged_decode_attention(
                q[:nd].contiguous(), key_cache, value_cache, meta.block_tables, meta.extras["decode_lens"], scale,
                sliding_window or 0)
        elif nd:
            out[:nd] = self._decode(q[:nd], k_flat, v_flat, meta, scale, sliding_window, logits_soft_cap)
        start = nd
        for i, b in enumerate(range(nd, meta.num_seqs)):
            q_len = meta.query_lens_cpu[b]
            end = start + q_len
            slots = meta.extras["prefill_slots"][i]
            if slots is None:
                keys, values = k[start:end], v[start:end]
            else:
                keys, values = k_flat.index_select(0, slots), v_flat.index_select(0, slots)
            out[start:end] = self._prefill(q[start:end], keys, values, scale, sliding_window, logits_soft_cap)
            start = end
        return out

    @classmethod
    def _decode(cls, q: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor, meta: AttentionMetadata,
                scale: float, sliding_window: Optional[int], soft_cap: Optional[float]) -> torch.Tensor:
        slots = meta.extras["decode_slots"]  # [Bd, L]
        bd, hq, d = q.shape
        hkv = k_flat.shape[1]
        # index_select, not advanced indexing: aten::index costs time proportional to the whole pool here
        keys = k_flat.index_select(0, slots.flatten()).view(bd, -1, hkv, d).transpose(1, 2)  # [Bd, Hkv, L, D]
        values = v_flat.index_select(0, slots.flatten()).view(bd, -1, hkv, d).transpose(1, 2)
        # Group query heads by their kv head: [Bd, Hkv, G, D]; no repeat of keys needed.
        qg = q.view(bd, hkv, hq // hkv, d)
        out = _attend(qg, keys, values, cls.decode_mask(meta, sliding_window), scale, soft_cap)
        return out.reshape(bd, hq, d)

    @staticmethod
    def _prefill(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float,
                 sliding_window: Optional[int], soft_cap: Optional[float]) -> torch.Tensor:
        q_len, s_len = q.shape[0], keys.shape[0]
        hq, hkv = q.shape[1], keys.shape[1]
        # 4-D [1, H, len, D]: with 3-D inputs the CPU picks SDPA's unfused math path (2.4x slower here).
        qh = q.transpose(0, 1)[None]  # [1, Hq, q_len, D]
        kh = keys.transpose(0, 1)[None]  # [1, Hkv, s_len, D]
        vh = values.transpose(0, 1)[None]
        if q_len == s_len and sliding_window is None and soft_cap is None:
            out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale, enable_gqa=hq != hkv)
        else:
            # Query i sits at absolute position s_len - q_len + i.
            qpos = torch.arange(s_len - q_len, s_len, device=q.device)[:, None]
            kpos = torch.arange(s_len, device=q.device)[None, :]
            mask = kpos <= qpos  # [q_len, s_len]
            if sliding_window is not None:
                mask &= kpos > qpos - sliding_window
            out = _attend(qh, kh, vh, mask, scale, soft_cap)
        return out[0].transpose(0, 1)


def gathered_decode_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                              slots: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Decode attention as gathers, products and sums that Inductor fuses into a few loops (compiled CPU steps).

    q [B, Hq, D]; key_cache, value_cache [blocks, block_size, Hkv, D] (this step's keys already stored);
    slots [B, L] the context's cache slots, padded; mask [B, 1, 1, L] which of them each sequence sees
    -> [B, Hq * D]. In compiled decode steps of any size this replaces the gathered copies and the SDPA
    call of TorchAttentionBackend: on the default model (2-core AMD EPYC, 128 + 128 tokens a sequence)
    1 sequence ran at 77.8 against 65.5 tokens/s with SDPA between the regions, 2 at 130 against 98,
    4 at 209 against 174, 11 at 247 against 214.
    """
    b, hq, d = q.shape
    hkv = key_cache.shape[-2]
    # token-major [B, L, Hkv, (G,) D]: each gathered key and value row stays contiguous along D, so the
    # loops Inductor generates for both products read whole rows (head-major loops gathered one float
    # per token for the values: 123 against 50 us for 256 tokens, default model's shapes, 2-core AMD EPYC)
    keys = key_cache.view(-1, hkv, d)[slots]  # [B, L, Hkv, D]
    values = value_cache.view(-1, hkv, d)[slots]
    grouped = q.view(b, 1, hkv, hq // hkv, d)  # query heads grouped by their kv head
    scores = (grouped * keys[:, :, :, None, :]).sum(-1) * scale  # [B, L, Hkv, G]
    probs = torch.softmax(scores.masked_fill(~mask.view(b, -1, 1, 1), float("-inf")), dim=1)
    return (probs[..., None] * values[:, :, :, None, :]).sum(1).reshape(b, hq * d)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
            soft_cap: Optional[float]) -> torch.Tensor:
    """Masked attention; q: [B, Hq, M, D], k/v: [B, Hkv, N, D], mask broadcast to [B, Hq, M, N].

    Without a soft cap this is SDPA. With one, SDPA's math is written out so that the
    scaled scores pass through cap * tanh(s / cap) before the softmax, as transformers does.
    """
    group = q.shape[1] // k.shape[1]
    if soft_cap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=group > 1)
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.tanh(q @ k.transpose(-1, -2) * scale / soft_cap) * soft_cap  # [B, Hq, M, N]
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v
