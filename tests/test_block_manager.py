"""The block manager alone: allocation, sharing, prefix caching, copy-on-write, eviction order."""

from dataclasses import dataclass, field

import pytest

from nbllm.engine.block_manager import NULL_BLOCK_ID, BlockManager


@dataclass
class Req:
    tokens: list
    num_computed_tokens: int = 0
    block_ids: list = field(default_factory=list)
    block_hashes: list = field(default_factory=list)

    @property
    def all_token_ids(self):
        return self.tokens


def _compute(bm, req, n):
    assert bm.allocate_slots(req, n)
    req.num_computed_tokens += n
    bm.cache_full_blocks(req)


def test_allocate_and_free_return_every_block():
    bm = BlockManager(num_blocks=9, block_size=4)
    req = Req(list(range(10)))
    assert bm.allocate_slots(req, 10)
    assert len(req.block_ids) == 3 and NULL_BLOCK_ID not in req.block_ids
    assert bm.num_used_blocks == 3 and bm.usage == pytest.approx(3 / 8)
    bm.free(req)
    assert bm.num_free_blocks == 8 and req.block_ids == []


def test_allocation_fails_without_side_effects():
    bm = BlockManager(num_blocks=3, block_size=4)
    req = Req(list(range(12)))
    assert not bm.allocate_slots(req, 12)
    assert req.block_ids == [] and bm.num_free_blocks == 2


def test_prefix_hits_are_whole_blocks_and_leave_one_token():
    bm = BlockManager(num_blocks=16, block_size=4)
    first = Req(list(range(12)))
    _compute(bm, first, 12)
    assert len(first.block_hashes) == 3
    same = Req(list(range(12)))  # identical prompt: the last block must be recomputed
    hits, n = bm.get_computed_blocks(same)
    assert n == 8 and hits == first.block_ids[:2]
    longer = Req(list(range(13)))
    hits, n = bm.get_computed_blocks(longer)
    assert n == 12
    other = Req([99] + list(range(1, 12)))
    assert bm.get_computed_blocks(other) == ([], 0)


def test_shared_blocks_survive_one_owner_freeing():
    bm = BlockManager(num_blocks=16, block_size=4)
    first = Req(list(range(9)))
    _compute(bm, first, 9)
    second = Req(list(range(9)) + [50])
    hits, n = bm.get_computed_blocks(second)
    assert bm.allocate_slots(second, len(second.tokens) - n, hits)
    assert second.block_ids[:2] == first.block_ids[:2]
    assert bm.blocks[first.block_ids[0]].ref_cnt == 2
    bm.free(first)
    assert bm.blocks[second.block_ids[0]].ref_cnt == 1
    bm.free(second)
    assert bm.num_free_blocks == 15


def test_freed_cached_blocks_are_found_again_until_reused():
    bm = BlockManager(num_blocks=4, block_size=4)  # 3 usable blocks
    first = Req(list(range(9)))
    _compute(bm, first, 9)
    bm.free(first)
    assert bm.block_states().count("cached") == 2
    again = Req(list(range(9)))
    hits, n = bm.get_computed_blocks(again)
    assert n == 8
    bm.allocate_slots(again, 1, hits)
    bm.free(again)
    filler = Req(list(range(100, 112)))  # needs all 3 blocks: evicts the cached prefixes
    assert bm.allocate_slots(filler, 12)
    assert bm.num_cached_blocks == 0
    assert bm.get_computed_blocks(Req(list(range(9)))) == ([], 0)


def test_tail_blocks_are_reused_first():
    bm = BlockManager(num_blocks=4, block_size=2)  # 3 usable blocks
    req = Req(list(range(6)))
    assert bm.allocate_slots(req, 6)
    tail = req.block_ids[-1]
    bm.free(req)
    fresh = Req([1, 2])
    bm.allocate_slots(fresh, 2)
    assert fresh.block_ids == [tail]  # the head blocks (likelier shared prefixes) stay cached longest


def test_fork_then_copy_on_write():
    bm = BlockManager(num_blocks=10, block_size=4)
    parent = Req(list(range(6)))
    _compute(bm, parent, 6)
    child = Req(list(range(6)))
    bm.fork(parent, child)
    child.num_computed_tokens = 6
    assert bm.blocks[parent.block_ids[1]].ref_cnt == 2
    allocation = bm.allocate_slots(child, 1)  # room for one token, and a private copy of the shared block
    assert allocation.block_copies == [(parent.block_ids[1], child.block_ids[1])]
    assert child.block_ids[0] == parent.block_ids[0]  # the full first block stays shared
    assert bm.blocks[parent.block_ids[1]].ref_cnt == 1
    bm.free(parent)
    bm.free(child)
    assert bm.num_free_blocks == 9


def test_prefix_caching_off_finds_nothing():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    first = Req(list(range(9)))
    _compute(bm, first, 9)
    assert bm.get_computed_blocks(Req(list(range(9)))) == ([], 0)
    assert bm.num_cached_blocks == 0
