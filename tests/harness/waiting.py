"""Bounded waiting on a condition: the one way tests wait (never a bare sleep as an assertion)."""

from __future__ import annotations

import time


def wait_for(cond, timeout: float, what: str = "condition", interval: float = 0.05):
    """Poll cond() until it returns something truthy (returned) or `timeout` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
