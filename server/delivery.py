"""How much a viewer may have in flight: the pacing that bounds a slow viewer's delay.

A frame written to a socket is not yet seen: it can wait in the kernel's send buffer, in the
viewer's receive buffer (Linux grows it to hundreds of KB for a slow reader: minutes of frames)
and in the viewer's WebSocket library. The server cannot see those buffers, so it asks: after it
writes frames it sends a WebSocket ping (a *delivery probe*, RFC 6455 peers answer every ping),
and the pong comes back only once the viewer's library has read everything written before it.
Frames written but not yet confirmed by a pong are *in flight*.

:class:`DeliveryWindow` lets a viewer have at most ``rate × (rtt_min + lag_bound / 4)`` frames
in flight, ``rate`` being the frames per second it confirmed over the last second and
``rtt_min`` its quickest probe round trip (a new viewer starts at 2 frames plus what one round
trip holds at 25 fps, and follows its rate after half a second). On a LAN a viewer that keeps up
(25 fps) gets a window of 7 frames, which binds only when a round trip takes a quarter second
longer than usual; a viewer that takes 5 frames a second gets 1 or 2, so what it holds is always
a fraction of a second old. Frames that cannot be written meanwhile wait in the viewer's queue,
where the hub drops the stale ones (server/hub.py); ``keeps_up`` tells it whether the viewer
confirms the frames offered to it. Pure bookkeeping, no I/O: the times are passed in."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from diffposetalk.units import FPS

RATE_WINDOW_S = 1.0  # confirmed frames over (at least) this span give the viewer's delivery rate
MIN_RATE_SPAN_S = 0.5  # before this much history: the initial window, and the viewer is assumed to keep up
INITIAL_FRAMES = 2  # one hop's frames at the default 80 ms, plus a round trip's worth once one is measured
# a viewer confirming at least this share of the frames offered to it keeps up (a short hiccup of
# the event loop does not make it skip frames; one reading 5 of 25 fps is far below)
KEEPS_UP = 0.5
PROBE_GAP_S = 0.2  # at most ~5 probes a second while the window is open (each is a ping + pong, ~50 us)
MAX_PROBES = 8  # outstanding at once: a far viewer has a few round trips' worth of frames unconfirmed


@dataclass(frozen=True)
class Probe:
    sent: int  # frames written before it
    time: float
    newest_emit: float  # t_emit of the newest of those frames


class DeliveryWindow:
    """Frames offered to one viewer (``offered``), written (``sent``) and confirmed
    (``confirmed``), the outstanding probes and the delivery rate. ``now`` is
    ``time.perf_counter()`` (the clock of FrameItem.t_emit)."""

    def __init__(self, lag_bound: float, now: float, fps: float = FPS, min_frames: int = 1,
                 initial_frames: int = INITIAL_FRAMES):
        self.lag_bound, self.fps, self.min_frames = lag_bound, fps, min_frames
        self.max_frames = max(min_frames, math.ceil(fps * lag_bound))
        self.initial_frames = min(self.max_frames, max(min_frames, initial_frames))
        self.offered = 0
        self.sent = 0
        self.confirmed = 0
        self.probes: deque[Probe] = deque()  # outstanding, oldest first
        self.rtt_min = math.inf  # the quickest probe round trip: the network's share of a pong's delay
        self.last_probe = -math.inf
        self._last_emit = 0.0
        # (time, confirmed, offered) at each pong. The first pong is the baseline: what it confirms
        # went into buffers that were empty, which says nothing about how fast the viewer reads.
        self._samples: deque[tuple[float, int, int]] = deque()

    def rates(self, now: float) -> tuple[float, float] | None:
        """(confirmed, offered) frames per second over the last RATE_WINDOW_S; None before
        MIN_RATE_SPAN_S of history since the first pong."""
        samples = self._samples
        while len(samples) >= 2 and samples[1][0] <= now - RATE_WINDOW_S:
            samples.popleft()  # samples[0] stays: the newest one at least RATE_WINDOW_S old
        if not samples:
            return None
        t0, c0, o0 = samples[0]
        span = now - t0
        if span < MIN_RATE_SPAN_S:
            return None
        return (self.confirmed - c0) / span, (self.offered - o0) / span

    def rate(self, now: float) -> float | None:
        """Frames per second the viewer confirmed over the last RATE_WINDOW_S (None: too early)."""
        rates = self.rates(now)
        return None if rates is None else rates[0]

    def keeps_up(self, now: float) -> bool:
        """It confirms at least KEEPS_UP of the frames offered to it; a new viewer is assumed to."""
        rates = self.rates(now)
        return rates is None or rates[0] >= KEEPS_UP * rates[1]

    def window(self, now: float) -> int:
        """Frames the viewer may have in flight now: what it confirms in one round trip of the
        network plus a quarter of the lag bound. A quarter because a viewer that falls behind holds
        them twice: in its receive buffer, then in its WebSocket library once it has read them
        (and answered the probe). The round trip keeps a far viewer from being throttled by its
        own window (it would confirm ever fewer frames a second)."""
        rate = self.rate(now)
        if rate is None:  # the frames one network round trip holds at full rate, plus a hop's
            pipe = 0 if math.isinf(self.rtt_min) else round(self.fps * self.rtt_min)
            return min(self.max_frames, self.initial_frames + pipe)
        # rounded up: a window-limited far viewer confirms W / rtt frames a second, so its next
        # window, ceil(W / rtt * (rtt + bound / 4)), is larger by at least one frame until it keeps up
        frames = math.ceil(rate * (self.rtt_min + self.lag_bound / 4) - 1e-6)
        return min(self.max_frames, max(self.min_frames, frames))

    def in_flight(self) -> int:
        return self.sent - self.confirmed

    def can_send(self, now: float) -> bool:
        return self.in_flight() < self.window(now)

    def on_offered(self) -> None:
        self.offered += 1

    def on_sent(self, t_emit: float) -> None:
        self.sent += 1
        self._last_emit = t_emit

    def probe_due(self, now: float) -> bool:
        """A probe should go out: frames were written since the last probe, and either the window
        is full (only a pong can reopen it) or the last probe is PROBE_GAP_S old."""
        probed = self.probes[-1].sent if self.probes else self.confirmed
        if self.sent == probed or len(self.probes) >= MAX_PROBES:
            return False
        return not self.can_send(now) or now - self.last_probe >= PROBE_GAP_S

    def on_probe(self, now: float) -> Probe:
        probe = Probe(self.sent, now, self._last_emit)
        self.probes.append(probe)
        self.last_probe = now
        return probe

    def on_pong(self, probe: Probe, now: float) -> float | None:
        """``probe`` was answered: the frames before it are delivered (a pong also answers every
        earlier ping). Returns the delivery lag of the newest of them (its emit time -> now), None
        when an earlier pong already covered it."""
        if probe.sent <= self.confirmed and probe not in self.probes:
            return None
        while self.probes and self.probes[0].sent <= probe.sent:
            self.probes.popleft()
        self.rtt_min = min(self.rtt_min, now - probe.time)
        self.confirmed = max(self.confirmed, probe.sent)
        self._samples.append((now, self.confirmed, self.offered))
        return now - probe.newest_emit
