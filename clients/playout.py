"""Adaptive jitter buffer: 25 fps frames (audio_time, values) onto the local clock, sampled with
linear interpolation at any rate. The browser viewer runs the same algorithm
(clients/web/playout.js; tests/test_playout.py checks that both agree).

Play time t = now - base - delay.
- ``base`` is the lower envelope of each frame's lateness (arrival - audio_time): it drops at once
  for a frame that comes early and leaks up by ``leak`` s per frame while frames keep coming late
  (a slower server), so playback re-times smoothly.
- ``delay`` is sized from the measured arrival jitter, not fixed: the ``quantile`` (90 %) of the
  frames' lateness above ``base`` over the last ``window`` frames, plus ``margin``, at most
  ``max_delay`` (150 ms: a server that stalls longer is better shown late than buffered for). A server emits each
  step's frames together (one at the default 40 ms hop, two at an 80 ms hop, where the first frame
  of a step is one frame period "later" than the last); the buffer needs that spread and the
  compute jitter, nothing more. The
  delay follows its target at a bounded slew (``grow`` and ``shrink`` s per s), which speeds
  playback up or down a little instead of jumping.
- ``delay=<seconds>``: a fixed delay instead (the old behaviour; also how a test injects one).
A reset flag or audio_time going backwards clears the buffer and re-anchors."""

from __future__ import annotations

import bisect
import math
from collections import deque

import numpy as np


class Playout:
    def __init__(self, delay: float | None = None, leak: float = 0.001, keep_s: float = 2.0,
                 quantile: float = 0.9, margin: float = 0.01, window: int = 100, min_delay: float = 0.0,
                 max_delay: float = 0.15, initial: float = 0.1, grow: float = 1.0, shrink: float = 0.1):
        self.fixed = delay is not None
        self.delay = float(delay) if self.fixed else initial
        self.target = self.delay
        self.leak, self.keep_s = leak, keep_s
        self.quantile, self.margin, self.min_delay, self.max_delay = quantile, margin, min_delay, max_delay
        self.grow, self.shrink = grow, shrink
        self.jitter: deque[float] = deque(maxlen=window)  # lateness above base of recent frames (s)
        self.times: list[float] = []
        self.values: list[np.ndarray] = []
        self.base: float | None = None
        self.last_now: float | None = None
        self.underruns = 0  # frames that arrived after their play time
        self.resets = 0

    def clear(self) -> None:
        self.times.clear()
        self.values.clear()
        self.base = None

    def push(self, audio_time: float, values: np.ndarray, now: float, reset: bool = False) -> None:
        if self.times and (reset or audio_time < self.times[-1] - 0.5):
            self.clear()
            self.resets += 1
        lateness = now - audio_time
        self.base = lateness if self.base is None else min(self.base + self.leak, lateness)
        late = lateness - self.base
        self.jitter.append(late)
        if late > self.delay:  # it missed its play time (shown late; the target learns from it)
            self.underruns += 1
        if not self.fixed:
            self.target = self._target()
        i = bisect.bisect(self.times, audio_time)
        if i and self.times[i - 1] == audio_time:  # a duplicate: keep the newer values
            self.values[i - 1] = values
            return
        self.times.insert(i, audio_time)
        self.values.insert(i, values)
        while self.times and self.times[0] < audio_time - self.keep_s:
            del self.times[0], self.values[0]

    def _target(self) -> float:
        q = float(np.quantile(np.fromiter(self.jitter, float), self.quantile))
        return min(self.max_delay, max(self.min_delay, q + self.margin))

    def _follow(self, now: float) -> None:
        """Move the delay towards its target, at most grow/shrink seconds per second."""
        dt = 0.0 if self.last_now is None else max(0.0, now - self.last_now)
        self.last_now = now
        if self.fixed:
            return
        if self.target > self.delay:
            self.delay = min(self.target, self.delay + self.grow * dt)
        else:
            self.delay = max(self.target, self.delay - self.shrink * dt)

    def play_time(self, now: float) -> float | None:
        return None if self.base is None else now - self.base - self.delay

    def sample(self, now: float) -> tuple[np.ndarray | None, float]:
        """(interpolated values or None when empty, seconds the play time is past the newest
        frame — > 0 means the buffer ran dry and the newest frame is held)."""
        self._follow(now)
        if not self.times:
            return None, math.inf
        t = self.play_time(now)
        if t <= self.times[0]:
            return self.values[0], t - self.times[0]
        if t >= self.times[-1]:
            return self.values[-1], t - self.times[-1]
        i = bisect.bisect(self.times, t)
        t0, t1 = self.times[i - 1], self.times[i]
        w = (t - t0) / (t1 - t0)
        return (1 - w) * self.values[i - 1] + w * self.values[i], t - self.times[-1]

    def buffered(self, now: float) -> float:
        """Frames waiting ahead of the play position, in seconds."""
        return max(0.0, self.times[-1] - self.play_time(now)) if self.times else 0.0
