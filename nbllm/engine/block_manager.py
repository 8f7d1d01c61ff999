"""The paged KV cache's bookkeeping: a pool of fixed-size blocks, in pure Python.

A request owns a block table (a list of block ids). Blocks carry reference counts so
that requests sharing a prompt prefix (prefix caching) or beams forked from one
another share physical blocks. Full blocks are named by a hash chain over their
tokens; a freed block keeps its hash and can be found again until it is reused
(least recently freed is reused first). Block 0 is never handed out: it is the
zeroed padding block that attention kernels may read for masked positions.

Nothing here touches tensors. Writes into a shared block are announced as
copy-on-write pairs (src, dst) that the model runner performs before the step;
`allocate_slots` counts, allocates and plans those copies in one call.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

NULL_BLOCK_ID = 0


class BlockOwner(Protocol):
    """What the block manager needs of a request (engine/sequence.py's Request)."""

    block_ids: list[int]
    block_hashes: list[bytes]
    num_computed_tokens: int

    @property
    def all_token_ids(self) -> Sequence[int]: ...


@dataclass
class SlotAllocation:
    """A successful allocate_slots: the copy-on-write block copies the runner must do first."""

    block_copies: list[tuple[int, int]]


@dataclass
class Block:
    block_id: int
    ref_cnt: int = 0
    block_hash: Optional[bytes] = None


def hash_block(parent_hash: Optional[bytes], token_ids: Sequence[int]) -> bytes:
    """The chained hash naming a full block: its tokens and everything before them."""
    digest = hashlib.sha256(parent_hash or b"root")
    digest.update(b",".join(str(t).encode() for t in token_ids))
    return digest.digest()


class BlockManager:
    """Allocates, shares, caches and frees KV blocks for requests."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 2:
            raise ValueError(f"the KV pool needs at least 2 blocks, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.blocks[NULL_BLOCK_ID].ref_cnt = 1  # never freed, never handed out
        # Free blocks in reuse order: the least recently freed first.
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(1, num_blocks))
        self._cached: dict[bytes, int] = {}
        self.prefix_cache_queries = 0  # prompt tokens looked up
        self.prefix_cache_hits = 0  # of which found in the cache

    # ----------------------------------------------------------------- queries
    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_usable_blocks - len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks holding a registered prefix (in use or free but still findable)."""
        return len(self._cached)

    @property
    def usage(self) -> float:
        return self.num_used_blocks / self.num_usable_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_states(self) -> list[str]:
        """Per usable block: "used", "cached" (free but holding a prefix) or "free"."""
        states = []
        for block in self.blocks[1:]:
            if block.ref_cnt > 0:
                states.append("used")
            elif block.block_hash is not None:
                states.append("cached")
            else:
                states.append("free")
        return states

    # ----------------------------------------------------------------- prefix cache
    def get_computed_blocks(self, request: BlockOwner) -> tuple[list[int], int]:
        """The longest cached prefix of a request's tokens, in whole blocks.

        At least one token is always left to compute, so the step that follows has
        logits to sample from and never writes into a shared cached block.
        """
        token_ids = request.all_token_ids
        if not self.enable_prefix_caching:
            return [], 0
        max_blocks = (len(token_ids) - 1) // self.block_size
        hits: list[int] = []
        parent: Optional[bytes] = None
        for i in range(max_blocks):
            chunk = token_ids[i * self.block_size:(i + 1) * self.block_size]
            parent = hash_block(parent, chunk)
            block_id = self._cached.get(parent)
            if block_id is None:
                break
            hits.append(block_id)
        return hits, len(hits) * self.block_size

    def record_prefix_lookup(self, num_queried_tokens: int, num_hit_tokens: int) -> None:
        """Count one admitted request's lookup (only admitted ones, so retries don't inflate)."""
        if self.enable_prefix_caching:
            self.prefix_cache_queries += num_queried_tokens
            self.prefix_cache_hits += num_hit_tokens

    def cache_full_blocks(self, request: BlockOwner) -> None:
        """Register every block of the request that is full of computed tokens."""
        if not self.enable_prefix_caching:
            return
        num_full = request.num_computed_tokens // self.block_size
        token_ids = request.all_token_ids
        while len(request.block_hashes) < num_full:
            i = len(request.block_hashes)
            parent = request.block_hashes[-1] if request.block_hashes else None
            block_hash = hash_block(parent, token_ids[i * self.block_size:(i + 1) * self.block_size])
            request.block_hashes.append(block_hash)
            block = self.blocks[request.block_ids[i]]
            if block.block_hash is None and block_hash not in self._cached:
                block.block_hash = block_hash
                self._cached[block_hash] = block.block_id

    # ----------------------------------------------------------------- allocation
    def allocate_slots(self, request: BlockOwner, num_new_tokens: int,
                       new_computed_blocks: Sequence[int] = ()) -> Optional["SlotAllocation"]:
        """Make room for `num_new_tokens` more tokens of the request; None (nothing changed) if the pool is short.

        `new_computed_blocks` are prefix-cache hits found by get_computed_blocks for a
        request that holds no blocks yet; they are shared, not copied. Blocks in the
        write range that are shared with another request (a forked beam) are replaced
        by private copies: the returned allocation lists the (src, dst) copies the model
        runner must perform before the step writes.
        """
        write_start = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        total_tokens = write_start + num_new_tokens
        have = len(request.block_ids) + len(new_computed_blocks)
        revived = sum(1 for b in new_computed_blocks if self.blocks[b].ref_cnt == 0)
        needed = max(0, self.blocks_needed(total_tokens) - have) + revived
        needed += len(self._shared_blocks_in(request, write_start, total_tokens))
        if needed > len(self._free):
            return None
        for block_id in new_computed_blocks:
            self._take(block_id)
            request.block_ids.append(block_id)
        for _ in range(self.blocks_needed(total_tokens) - len(request.block_ids)):
            request.block_ids.append(self._pop_free())
        return SlotAllocation(self._copy_on_write(request, write_start, total_tokens))

    def free(self, request: BlockOwner) -> None:
        """Drop the request's references; tail blocks become the first to be reused."""
        for block_id in reversed(request.block_ids):
            self._release(block_id)
        request.block_ids = []
        request.block_hashes = []

    def fork(self, parent: BlockOwner, child: BlockOwner) -> None:
        """Make `child` share every block of `parent` (beam search)."""
        for block_id in parent.block_ids:
            self.blocks[block_id].ref_cnt += 1
        child.block_ids = list(parent.block_ids)
        child.block_hashes = list(parent.block_hashes)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix held by a free block."""
        for block_id in self._free:
            block = self.blocks[block_id]
            if block.block_hash is not None:
                self._cached.pop(block.block_hash, None)
                block.block_hash = None

    # ----------------------------------------------------------------- internals
    def _shared_blocks_in(self, request: BlockOwner, start: int, end: int) -> list[int]:
        """Indices into the block table of held blocks in token range [start, end) that others share."""
        last = min((end - 1) // self.block_size, len(request.block_ids) - 1)
        return [i for i in range(start // self.block_size, last + 1)
                if self.blocks[request.block_ids[i]].ref_cnt > 1]

    def _copy_on_write(self, request: BlockOwner, start: int, end: int) -> list[tuple[int, int]]:
        """Replace shared blocks in the write range by private copies (the free blocks were counted)."""
        copies = []
        for i in self._shared_blocks_in(request, start, end):
            src = request.block_ids[i]
            dst = self._pop_free()
            self._release(src)
            request.block_ids[i] = dst
            copies.append((src, dst))
        return copies

    def _pop_free(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None:  # evict the prefix it held
            if self._cached.get(block.block_hash) == block_id:
                del self._cached[block.block_hash]
            block.block_hash = None
        block.ref_cnt = 1
        return block_id

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_cnt == 0:
            del self._free[block_id]
        block.ref_cnt += 1

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_cnt -= 1
        if block.ref_cnt < 0:
            raise RuntimeError(f"block {block_id} freed more often than it was taken")
        if block.ref_cnt == 0:
            self._free[block_id] = None
