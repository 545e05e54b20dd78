"""A token bucket per API key: events per second with a burst, pure (the clock is passed in)."""

from __future__ import annotations

import math


class TokenBucket:
    """Holds up to ``burst`` tokens, refilled at ``rate_per_s``; a request takes one per event,
    all or none."""

    __slots__ = ("_tokens", "_updated", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._updated = now

    def take(self, events: int, now: float) -> float:
        """Take ``events`` tokens and return 0, or take none and return the seconds until
        there would be enough (``math.inf`` when ``events`` exceeds the burst)."""
        self._tokens = min(float(self.burst),
                           self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now
        if events <= self._tokens:
            self._tokens -= events
            return 0.0
        if events > self.burst:
            return math.inf
        return (events - self._tokens) / self.rate_per_s
