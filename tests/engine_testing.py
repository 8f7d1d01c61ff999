"""Helpers shared by tests that drive a live engine."""

import time


def wait_idle(llm, timeout: float = 10.0):
    """Poll until nothing runs or waits and no block is used; fail with the last snapshot otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = llm.get_stats()
        if m.num_requests_running == 0 and m.num_requests_waiting == 0 and m.num_blocks_used == 0:
            return m
        time.sleep(0.02)
    raise AssertionError(f"engine not idle: {llm.get_stats()}")
