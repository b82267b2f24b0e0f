"""Exponential backoff with jitter, for retries against the API server.

Jitter (±20 %) keeps a fleet of agents that lost the API server together
from coming back in lockstep; the cap bounds how stale a client stays once
the server is back."""
from __future__ import annotations

import random
from typing import Callable


class Backoff:
    """``first`` seconds, doubling to ``cap``; ``reset`` after a success."""

    def __init__(self, first: float = 1.0, cap: float = 60.0, jitter: Callable[[], float] | None = None):
        self.first, self.cap, self.delay = first, cap, first
        self._jitter = jitter or (lambda: random.uniform(0.8, 1.2))

    def next(self) -> float:
        d = self.delay
        self.delay = min(self.cap, self.delay * 2)
        return d * self._jitter()

    def reset(self) -> None:
        self.delay = self.first


__all__ = ["Backoff"]
