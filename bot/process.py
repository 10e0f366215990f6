"""What a running process of the bot shares, whichever command started it (`run`, `demo`):
its log line format and a clean stop on SIGINT / SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def stop_on_signals(
    stop: asyncio.Event, on_signal: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Inside a running loop: the first SIGINT or SIGTERM sets `stop` (a clean stop). The
    handlers are then removed, so a second Ctrl-C interrupts at once."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def remove() -> None:
        for sig in signals:
            loop.remove_signal_handler(sig)

    def handle(sig: signal.Signals) -> None:
        log.info("received %s: stopping", sig.name)
        remove()
        if on_signal is not None:
            on_signal(sig.name)
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, handle, sig)
    try:
        yield
    finally:
        remove()
