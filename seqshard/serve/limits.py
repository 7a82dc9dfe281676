"""Request rate limiting per client address: at most N requests in any 60-second window.

A sliding log per client (the times of its recent requests), so a burst at the end of one minute and the start
of the next cannot double the rate. Clients idle for a window are forgotten, so memory follows the active clients.
"""

from __future__ import annotations

import time
from collections import deque


class SlidingWindowLimiter:
    """`check(client)` admits and records a request, or says how many seconds until the client may retry."""

    def __init__(self, limit: int, window_seconds: float = 60.0) -> None:
        self.limit = limit
        self.window = window_seconds
        self._seen: dict[str, deque[float]] = {}
        self._last_sweep = time.monotonic()

    def check(self, client: str, now: float | None = None) -> float | None:
        """None when the request is admitted; otherwise the seconds until the oldest request leaves the window."""
        if self.limit <= 0:
            return None
        now = time.monotonic() if now is None else now
        self._sweep(now)
        times = self._seen.setdefault(client, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            return times[0] + self.window - now
        times.append(now)
        return None

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < self.window:
            return
        self._last_sweep = now
        for client in [c for c, times in self._seen.items() if not times or times[-1] <= now - self.window]:
            del self._seen[client]
