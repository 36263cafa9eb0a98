"""Ctrl-C during training: finish the current step, save a step checkpoint, exit with 130.

A KeyboardInterrupt can land anywhere, including half-way through an optimizer
step, so the first SIGINT only raises a flag that the step loop checks between
steps. A second Ctrl-C interrupts at once (the last step checkpoint stays).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from prism.errors import PrismError


class Interrupted(PrismError):
    """Training stopped by the user; the state was saved (exit code 130, like a shell)."""

    exit_code = 130


class InterruptFlag:
    def __init__(self) -> None:
        self.requested = False


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[InterruptFlag]:
    """Turn the first SIGINT into ``flag.requested = True``; a second one raises KeyboardInterrupt."""
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be installed from the main thread
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag.requested:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag.requested = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
