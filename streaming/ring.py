"""A fixed-capacity ring buffer of 16 kHz samples addressed by absolute sample index.

Memory stays flat however long the stream runs: only the newest ``capacity`` samples are kept.
Reads outside what was written (before the stream start, past its end) come back as zeros with a
mask, so callers can treat them as silence/padding."""

from __future__ import annotations

from collections import deque

import numpy as np


class RingBuffer:
    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._buf = np.zeros(capacity, np.float32)
        self.written = 0  # absolute index one past the newest sample
        # (end sample index, arrival time) per written block, oldest first, for latency accounting
        self._arrivals: deque[tuple[int, float]] = deque()

    @property
    def oldest(self) -> int:
        return max(0, self.written - self.capacity)

    def write(self, samples: np.ndarray, arrival: float | None = None) -> None:
        n = len(samples)
        if n == 0:
            return
        if n > self.capacity:  # only the newest capacity samples survive anyway
            samples = samples[-self.capacity:]
            self.written += n - self.capacity
            n = self.capacity
        pos = self.written % self.capacity
        first = min(n, self.capacity - pos)
        self._buf[pos:pos + first] = samples[:first]
        self._buf[: n - first] = samples[first:]
        self.written += n
        if arrival is not None:
            self._arrivals.append((self.written, arrival))

    def read(self, start: int, end: int) -> tuple[np.ndarray, int, int]:
        """Samples [start, end) -> (array, lo, hi): array[lo:hi] is real audio, the rest zeros.
        Raises if part of the range was already overwritten."""
        out = np.zeros(end - start, np.float32)
        a, b = max(start, 0), min(end, self.written)
        if a < b:
            if a < self.oldest:
                raise ValueError(f"samples {a}..{self.oldest} were already overwritten (buffer too small)")
            pos = a % self.capacity  # [a, b) lies within the last lap: at most two slices
            first = min(b - a, self.capacity - pos)
            out[a - start:a - start + first] = self._buf[pos:pos + first]
            out[a - start + first:b - start] = self._buf[: b - a - first]
        return out, max(a - start, 0), max(b - start, 0)

    def arrival_of(self, sample: int) -> float | None:
        """Wall time at which sample index ``sample - 1`` had arrived (the block holding it)."""
        for end, t in self._arrivals:
            if end >= sample:
                return t
        return self._arrivals[-1][1] if self._arrivals else None

    def forget_arrivals(self, before: int) -> None:
        """Drop arrival records of blocks that end before sample ``before`` (keeps memory flat)."""
        while len(self._arrivals) > 1 and self._arrivals[0][0] < before:
            self._arrivals.popleft()
