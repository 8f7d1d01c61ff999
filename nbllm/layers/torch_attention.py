"""The plain PyTorch attention backend: the CPU path, and the reference the Triton kernels are tested against.

It implements nbllm.layers.attention_backend's AttentionBackend with
F.scaled_dot_product_attention only, so it runs wherever torch runs.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from nbllm.layers.attention_backend import AttentionMetadata, KVCache


class TorchAttentionBackend:
    """The plain PyTorch path: the CPU implementation and the reference for the kernels.

    Decodes are batched: their contexts are gathered into a padded [B, L] slot index
    (padding points at the zeroed block 0 and is masked out) and attended in one call.
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

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: KVCache,
                meta: AttentionMetadata, scale: float, sliding_window: Optional[int] = None,
                logits_soft_cap: Optional[float] = None) -> torch.Tensor:
        key_cache, value_cache = kv_cache
        num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
        k_flat = key_cache.view(-1, num_kv_heads, head_dim)  # [slots, Hkv, D]
        v_flat = value_cache.view(-1, num_kv_heads, head_dim)
        k_flat.index_copy_(0, meta.slot_mapping, k)
        v_flat.index_copy_(0, meta.slot_mapping, v)

        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd:
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

    @staticmethod
    def _decode(q: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor, meta: AttentionMetadata,
                scale: float, sliding_window: Optional[int], soft_cap: Optional[float]) -> torch.Tensor:
        slots = meta.extras["decode_slots"]  # [Bd, L]
        bd, hq, d = q.shape
        hkv = k_flat.shape[1]
        # index_select, not advanced indexing: aten::index costs time proportional to the whole pool here
        keys = k_flat.index_select(0, slots.flatten()).view(bd, -1, hkv, d).transpose(1, 2)  # [Bd, Hkv, L, D]
        values = v_flat.index_select(0, slots.flatten()).view(bd, -1, hkv, d).transpose(1, 2)
        # Group query heads by their kv head: [Bd, Hkv, G, D]; no repeat of keys needed.
        qg = q.view(bd, hkv, hq // hkv, d)
        mask = meta.extras["decode_mask"]
        if sliding_window is not None:  # the last sliding_window tokens: built once per step and window
            key = f"decode_mask_window_{sliding_window}"
            if key not in meta.extras:
                in_window = meta.extras["decode_distance"] <= sliding_window
                meta.extras[key] = mask & in_window[:, None, None, :]
            mask = meta.extras[key]
        out = _attend(qg, keys, values, mask, scale, soft_cap)
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
