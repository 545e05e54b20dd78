"""A rate meter: rows per second over a sliding window."""

from __future__ import annotations

import collections
from typing import Final

_RATE_WINDOW_S: Final = 30.0


class RateMeter:
    """Rows per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = _RATE_WINDOW_S) -> None:
        self._window_s = window_s
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self.total = 0

    def add(self, rows: int, now: float) -> None:
        self.total += rows
        self._samples.append((now, self.total))
        while self._samples and self._samples[0][0] < now - self._window_s:
            self._samples.popleft()

    def rate(self, now: float) -> float:
        if not self._samples:
            return 0.0
        first_t, first_total = self._samples[0]
        span = max(now - first_t, 1.0)
        return (self.total - first_total) / span if len(self._samples) > 1 else 0.0
