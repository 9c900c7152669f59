"""Server metrics: counters, gauges and fixed-bucket histograms written in the Prometheus text
format by hand (no client library), plus quantiles estimated from the buckets the way
Prometheus' ``histogram_quantile`` does. Observations come from pipeline threads and the event
loop, hence the lock."""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections import defaultdict

# Bucket upper bounds in seconds: fine at the low end (server overhead is tens of microseconds),
# up to seconds for latency under load.
OVERHEAD_BUCKETS = (2.5e-5, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 7.5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
                    0.1, 0.25, 0.5, 1.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
                   1.0, 2.0, 5.0)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3,
                0.5, 1.0, 2.0)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name, self.help, self.bounds = name, help_text, tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # last: +Inf
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.bounds, value)  # first bound >= value (le="bound"); called per frame write
        with self._lock:
            self.counts[i] += 1
            self.sum += value
            self.count += 1

    def snapshot(self) -> tuple[list[int], float, int]:
        with self._lock:
            return list(self.counts), self.sum, self.count

    def quantile(self, q: float) -> float | None:
        """The q-quantile estimated from the buckets (None when empty)."""
        counts, _, _ = self.snapshot()
        return quantile_from_cumulative(self.bounds + (math.inf,), list(itertools.accumulate(counts)), q)

    def render(self) -> list[str]:
        counts, total_sum, total = self.snapshot()
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cum = 0
        for bound, c in zip(self.bounds, counts):
            cum += c
            lines.append(f'{self.name}_bucket{{le="{_fmt(bound)}"}} {cum}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {total}')
        lines.append(f"{self.name}_sum {_fmt(total_sum)}")
        lines.append(f"{self.name}_count {total}")
        return lines


def quantile_from_cumulative(bounds, cum, q: float) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket holding the
    q-quantile. ``bounds`` ascending upper bounds, the last +Inf; ``cum`` the cumulative count at
    each (the last is the total). None when empty; the +Inf bucket answers with the largest finite
    bound. Shared by the server's own figures and serve-bench's reading of /metrics."""
    total = cum[-1]
    if total <= 0:
        return None
    rank = q * total
    prev_b, prev_c = 0.0, 0
    for b, c in zip(bounds, cum):
        if c >= rank and c > prev_c:
            return prev_b if math.isinf(b) else prev_b + (b - prev_b) * (rank - prev_c) / (c - prev_c)
        if not math.isinf(b):
            prev_b = b
        prev_c = c
    return prev_b


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ServerMetrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.frames_total = 0
        self.dropped_total: dict[str, int] = defaultdict(int)  # by session
        self.connections_total = 0
        self.rejected_total: dict[str, int] = defaultdict(int)  # by HTTP status / close reason
        self.frame_latency = Histogram("dpt_frame_latency_seconds",
                                       "Frame emit time minus the arrival of its last audio sample.",
                                       LATENCY_BUCKETS)
        self.step_seconds = Histogram("dpt_step_seconds", "Compute time of one pipeline step.", STEP_BUCKETS)
        self.overhead = Histogram("dpt_server_overhead_seconds",
                                  "From the pipeline emitting a frame to the frame written to a viewer's socket.",
                                  OVERHEAD_BUCKETS)

    def add_frames(self, n: int) -> None:
        with self._lock:
            self.frames_total += n

    def add_dropped(self, session: str, n: int) -> None:
        with self._lock:
            self.dropped_total[session] += n

    def add_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected_total[reason] += 1

    def add_connection(self) -> None:
        with self._lock:
            self.connections_total += 1

    def render(self, viewers: int, sessions: int) -> str:
        with self._lock:
            frames, dropped = self.frames_total, dict(self.dropped_total)
            conns, rejected = self.connections_total, dict(self.rejected_total)
        lines = ["# HELP dpt_frames_total Motion frames produced by all pipelines.",
                 "# TYPE dpt_frames_total counter", f"dpt_frames_total {frames}",
                 "# HELP dpt_dropped_frames_total Frames dropped from slow viewers' queues.",
                 "# TYPE dpt_dropped_frames_total counter"]
        lines += [f'dpt_dropped_frames_total{{session="{_label(s)}"}} {n}' for s, n in sorted(dropped.items())]
        lines += ["# HELP dpt_connections_total WebSocket connections accepted.",
                  "# TYPE dpt_connections_total counter", f"dpt_connections_total {conns}",
                  "# HELP dpt_rejected_total Requests refused before or after the upgrade, by reason.",
                  "# TYPE dpt_rejected_total counter"]
        lines += [f'dpt_rejected_total{{reason="{_label(r)}"}} {n}' for r, n in sorted(rejected.items())]
        lines += ["# HELP dpt_viewers Open WebSocket connections.", "# TYPE dpt_viewers gauge",
                  f"dpt_viewers {viewers}",
                  "# HELP dpt_sessions Open sessions.", "# TYPE dpt_sessions gauge", f"dpt_sessions {sessions}"]
        for h in (self.frame_latency, self.step_seconds, self.overhead):
            lines += h.render()
        return "\n".join(lines) + "\n"
