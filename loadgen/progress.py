"""Live progress of a run on stderr: requests done, in flight, errors, and the current completion rate.

The rate is completions per second over the last ``window_s`` seconds, so a server falling behind
shows up while the run goes on, not only in the summary.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable

from loadgen.client import RequestRecord


class Progress:
    """Counts sends and completions; draws a tqdm bar when enabled (a no-op counter otherwise)."""

    def __init__(self, total: int, *, enabled: bool = True, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.in_flight = 0
        self.done = 0
        self.errors = 0
        self.timeouts = 0
        self.window_s = window_s
        self._clock = clock
        self._recent: deque[float] = deque()
        self._started = clock()
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="req", file=sys.stderr, dynamic_ncols=True, leave=True,
                             desc="requests")

    def on_sent(self, record: RequestRecord) -> None:
        self.in_flight += 1
        self._refresh()

    def on_done(self, record: RequestRecord) -> None:
        self.in_flight -= 1
        self.done += 1
        if record.status == "error":
            self.errors += 1
        elif record.status == "timeout":
            self.timeouts += 1
        self._recent.append(self._clock())
        if self._bar is not None:
            self._bar.update(1)
        self._refresh()

    def rate(self) -> float:
        """Completions per second over the last ``window_s`` seconds (or since the start, if sooner)."""
        now = self._clock()
        while self._recent and self._recent[0] < now - self.window_s:
            self._recent.popleft()
        span = min(self.window_s, now - self._started)
        return len(self._recent) / span if span > 0 else 0.0

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix(in_flight=self.in_flight, errors=self.errors, timeouts=self.timeouts,
                                  rate=f"{self.rate():.2f}/s", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.refresh()
            self._bar.close()
