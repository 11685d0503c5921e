"""Waiting for something observable: a poll with a deadline and a clear failure, never a bare sleep.

The clock is used for the deadline only; no test asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")
POLL_S = 0.05


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = POLL_S) -> T:
    """Call ``check`` every ``interval`` seconds until it returns something truthy, and return that;
    fail with ``what`` and the last value seen once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting until {what} (last seen: {value!r})")
        time.sleep(interval)


async def until(check: Callable[[], Any], timeout: float, what: str, interval: float = POLL_S) -> Any:
    """:func:`wait_for` inside an event loop: ``check`` may be a plain or an async function, and
    the loop keeps running between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting until {what} (last seen: {value!r})")
        await asyncio.sleep(interval)

