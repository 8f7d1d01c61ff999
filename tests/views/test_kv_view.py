"""What the KV monitor sends: the window of samples as columns, the pool, and one code per block."""

from __future__ import annotations

from dataclasses import replace

from nbllm.views.kv_view import CACHED, FREE, USED, KVSample, grid_payload, pool_payload, series_payload


def sample(t: float, usage: float, rate=None) -> KVSample:
    return KVSample(timestamp=t, kv_cache_usage_perc=usage, num_blocks_used=0, num_blocks_cached=0,
                    num_requests_running=1, num_requests_waiting=0, num_preemptions=0, tokens_per_second=rate,
                    prefix_cache_hit_rate=0.25)


def test_series_holds_the_last_window_relative_to_the_newest_sample():
    series = series_payload([sample(0.0, 0.1), sample(50.0, 0.2, 12.34), sample(100.0, 0.003, 7.0)], window_s=60)
    assert series["t"] == [-50.0, 0.0]
    assert series["usage"] == [20.0, 0.3] and series["tokens_per_s"] == [12.3, 7.0]
    assert series["hit_rate"] == [25.0, 25.0] and series["running"] == [1, 1]
    assert series_payload([sample(0.0, 0.1)], 60)["tokens_per_s"] == [None], "the first reading has no rate"
    assert series_payload([], 60)["t"] == []


def test_grid_codes_each_block_by_its_request(tiny_llm):
    stats = replace(tiny_llm.get_stats(), block_states=["used", "used", "used", "cached", "free", "used"],
                    request_blocks={"b": [1, 2], "a": [0, 1]})
    grid = grid_payload(stats)
    assert grid["requests"] == ["a", "b"]
    assert grid["blocks"] == [0, 0, 1, CACHED, FREE, USED], "first holder; a used block nobody names is USED"
    assert grid["shared"] == [[1, [0, 1]]]
    pool = pool_payload(stats)
    assert pool == {"blocks": stats.num_blocks_total, "block_size": stats.block_size,
                    "tokens": stats.num_blocks_total * stats.block_size}
