"""Thread ownership of the models, checked: a debug assertion that only the owning thread calls in.

In the service every llama.cpp context, vocabulary and embedding model is created on the CPU
scheduler's thread, which then owns it: a call from any other thread (the event loop, a worker
pool) would race that thread's ``llama_decode`` or forward pass. Each such object keeps an
:class:`OwnerThread`; with checks on (``SMALLFIRST_THREAD_CHECKS``, on in the tests) a call from
another thread raises :class:`ThreadViolation` instead of racing. Off, a check is one attribute read.
"""

from __future__ import annotations

import threading

_enabled = [False]  # one switch for the process, set from the settings at start


class ThreadViolation(AssertionError):
    """A model was called from a thread that does not own it."""


def enable_checks(on: bool) -> None:
    """Turn the ownership checks on or off for this process."""
    _enabled[0] = bool(on)


def checks_enabled() -> bool:
    return _enabled[0]


class OwnerThread:
    """The thread that created a model object, the only one allowed to call into it."""

    __slots__ = ("ident", "name", "what")

    def __init__(self, what: str) -> None:
        current = threading.current_thread()
        self.ident = current.ident
        self.name = current.name
        self.what = what

    def check(self, call: str) -> None:
        """Raise :class:`ThreadViolation` when checks are on and the caller is another thread."""
        if _enabled[0] and threading.get_ident() != self.ident:
            raise ThreadViolation(
                f"{self.what}.{call} called on thread {threading.current_thread().name!r}; "
                f"only {self.name!r}, which created it, may call it")
