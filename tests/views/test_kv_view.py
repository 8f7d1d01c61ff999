"""What the KV monitor sends: each reading, the window of samples as columns, the pool, and the blocks'
codes, run-length encoded."""

from __future__ import annotations

from dataclasses import replace

from nbllm.views.kv_monitor_js import KV_MONITOR_ESM
from nbllm.views.kv_view import (CACHED, FREE, SERIES_KEYS, USED, KVSample, grid_payload, pool_payload, sample_payload,
                                 series_payload)


def sample(t: float, usage: float, rate=None) -> KVSample:
    return KVSample(timestamp=t, kv_cache_usage_perc=usage, num_blocks_used=0, num_blocks_cached=0,
                    num_requests_running=1, num_requests_waiting=0, num_preemptions=0, tokens_per_second=rate,
                    prefix_cache_hit_rate=0.25)


def test_series_holds_the_last_window_on_the_engines_clock():
    series = series_payload([sample(0.0, 0.1), sample(50.0, 0.2, 12.34), sample(100.0, 0.003, 7.0)], window_s=60)
    assert series["ts"] == [50.0, 100.0]
    assert series["usage"] == [20.0, 0.3] and series["tokens_per_s"] == [12.3, 7.0]
    assert series["hit_rate"] == [25.0, 25.0] and series["running"] == [1, 1]
    assert series_payload([sample(0.0, 0.1)], 60)["tokens_per_s"] == [None], "the first reading has no rate"
    assert series_payload([], 60) == {key: [] for key in SERIES_KEYS}
    assert sample_payload(sample(7.0, 0.5, 3.0)) == {key: column[0] for key, column in
                                                      series_payload([sample(7.0, 0.5, 3.0)], 60).items()}


def test_the_browser_knows_every_column():
    for key in SERIES_KEYS:
        assert f'"{key}"' in KV_MONITOR_ESM


def test_grid_codes_each_block_by_its_request_run_length_encoded(tiny_llm):
    stats = replace(tiny_llm.get_stats(), block_states=["used", "used", "used", "cached", "free", "free", "used"],
                    request_blocks={"b": [1, 2], "a": [0, 1]})
    grid = grid_payload(stats)
    assert grid["requests"] == ["a", "b"]
    assert grid["runs"] == [[0, 2], [1, 1], [CACHED, 1], [FREE, 2], [USED, 1]], \
        "first holder; a used block nobody names is USED"
    assert grid["shared"] == [[1, [0, 1]]]
    pool = pool_payload(stats)
    assert pool == {"blocks": stats.num_blocks_total, "block_size": stats.block_size,
                    "tokens": stats.num_blocks_total * stats.block_size}
