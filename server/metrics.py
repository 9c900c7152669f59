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
        self.dropped_by_cause: dict[str, int] = defaultdict(int)  # queue (full) / lag (older than the bound)
        self.timeouts_total: dict[str, int] = defaultdict(int)  # keepalive / upstream_idle / stalled
        self.connections_total = 0
        self.rejected_total: dict[str, int] = defaultdict(int)  # by HTTP status / close reason
        self.frame_latency = Histogram("dpt_frame_latency_seconds",
                                       "Frame emit time minus the arrival of its last audio sample.",
                                       LATENCY_BUCKETS)
        self.step_seconds = Histogram("dpt_step_seconds", "Compute time of one pipeline step.", STEP_BUCKETS)
        self.overhead = Histogram("dpt_server_overhead_seconds",
                                  "From the pipeline emitting a frame to the frame written to a viewer's socket.",
                                  OVERHEAD_BUCKETS)
        self.loop_lag = Histogram("dpt_event_loop_lag_seconds",
                                  "How late the event loop runs a timer (sampled every 50 ms): upstream audio is "
                                  "resampled and fed to its session in the loop, so this much waits unseen.",
                                  STEP_BUCKETS)
        self.delivery = Histogram("dpt_viewer_delivery_seconds",
                                  "From the pipeline emitting a frame to the viewer's WebSocket library confirming "
                                  "it read it (the pong to the delivery probe sent after the frame).",
                                  LATENCY_BUCKETS)

    def add_frames(self, n: int) -> None:
        with self._lock:
            self.frames_total += n

    def add_dropped(self, session: str, n: int, cause: str = "queue") -> None:
        with self._lock:
            self.dropped_total[session] += n
            self.dropped_by_cause[cause] += n

    def add_timeout(self, kind: str) -> None:
        with self._lock:
            self.timeouts_total[kind] += 1

    def counts(self) -> dict[str, dict[str, int]]:
        """The labelled counters as plain dicts (for /healthz)."""
        with self._lock:
            return {"dropped_by_session": dict(self.dropped_total), "dropped_by_cause": dict(self.dropped_by_cause),
                    "rejected": dict(self.rejected_total), "timeouts": dict(self.timeouts_total)}

    def add_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected_total[reason] += 1

    def add_connection(self) -> None:
        with self._lock:
            self.connections_total += 1

    def render(self, viewers: int, sessions: int, lag_bound: float | None = None, viewers_behind: int = 0) -> str:
        """``lag_bound``: the server's per-viewer lag bound in seconds (None: off, the gauge is
        left out); ``viewers_behind``: viewers whose frames now wait for their delivery window."""
        with self._lock:
            frames, dropped, causes = self.frames_total, dict(self.dropped_total), dict(self.dropped_by_cause)
            conns, rejected, timeouts = self.connections_total, dict(self.rejected_total), dict(self.timeouts_total)
        lines = ["# HELP dpt_frames_total Motion frames produced by all pipelines.",
                 "# TYPE dpt_frames_total counter", f"dpt_frames_total {frames}"]
        lines += _labelled_counter("dpt_dropped_frames_total", "Frames dropped for slow viewers, by session.",
                                   "session", dropped)
        lines += _labelled_counter("dpt_viewer_dropped_frames_total", "Frames dropped for slow viewers, by cause "
                                   "(queue: its queue was full; lag: older than the lag bound allows).", "cause", causes)
        lines += ["# HELP dpt_connections_total WebSocket connections accepted.",
                  "# TYPE dpt_connections_total counter", f"dpt_connections_total {conns}"]
        lines += _labelled_counter("dpt_rejected_total", "Requests refused before or after the upgrade, by reason.",
                                   "reason", rejected)
        lines += _labelled_counter("dpt_timeouts_total", "Keep-alive pings unanswered, upstreams ended for lack of "
                                   "audio, viewers closed for taking no frame (stalled), by kind.", "kind", timeouts)
        lines += ["# HELP dpt_viewers Open WebSocket connections.", "# TYPE dpt_viewers gauge",
                  f"dpt_viewers {viewers}",
                  "# HELP dpt_viewers_behind Viewers whose frames wait for their delivery window.",
                  "# TYPE dpt_viewers_behind gauge", f"dpt_viewers_behind {viewers_behind}",
                  "# HELP dpt_sessions Open sessions.", "# TYPE dpt_sessions gauge", f"dpt_sessions {sessions}"]
        if lag_bound is not None:
            lines += ["# HELP dpt_lag_bound_seconds How far behind live a viewer may fall before frames are dropped.",
                      "# TYPE dpt_lag_bound_seconds gauge", f"dpt_lag_bound_seconds {_fmt(lag_bound)}"]
        for h in (self.frame_latency, self.step_seconds, self.overhead, self.delivery, self.loop_lag):
            lines += h.render()
        return "\n".join(lines) + "\n"


def _labelled_counter(name: str, help_text: str, label: str, values: dict) -> list[str]:
    """A Prometheus counter with one sample per label value (sorted)."""
    return [f"# HELP {name} {help_text}", f"# TYPE {name} counter"] + \
        [f'{name}{{{label}="{_label(k)}"}} {n}' for k, n in sorted(values.items())]


def render_cluster(stats: dict, health: dict | None, prefix: str = "dpt_cluster") -> str:
    """A cluster scheduler's figures (server/remote_scheduler.py RemoteScheduler.stats) in the
    Prometheus text format: replicas and healthy replicas, and per replica the requests in flight,
    its scheduler's queue depth, calls by kind and batch size, call times, and the step latency
    through Ray seen by this front end; faults (timeouts, dead replicas, retries spent)."""
    lines = []
    if health is not None:
        lines += [f"# HELP {prefix}_replicas Replicas the deployment has or is starting.", f"# TYPE {prefix}_replicas gauge",
                  f"{prefix}_replicas {health.get('replicas', 0)}",
                  f"# HELP {prefix}_replicas_healthy Replicas running and passing their health checks.",
                  f"# TYPE {prefix}_replicas_healthy gauge", f"{prefix}_replicas_healthy {health.get('healthy', 0)}"]
    lines += _labelled_counter(f"{prefix}_faults_total", "Failed attempts by cause (timeout, died, closed) and steps "
                               "shed after the last retry (shed).", "cause", stats.get("faults", {}))
    replicas = stats.get("replicas", {})
    gauges = (("in_flight", "Requests this front end has in flight on the replica."),
              ("queue_depth", "Requests waiting in the replica's batching scheduler."))
    for key, help_text in gauges:
        lines += [f"# HELP {prefix}_replica_{key} {help_text}", f"# TYPE {prefix}_replica_{key} gauge"]
        lines += [f'{prefix}_replica_{key}{{replica="{_label(rid)}"}} {r.get(key, 0)}' for rid, r in replicas.items()]
    lines += [f"# HELP {prefix}_replica_calls_total Network calls of the replica by kind and windows per call.",
              f"# TYPE {prefix}_replica_calls_total counter"]
    for rid, r in replicas.items():
        for kind, sizes in r.get("batch_sizes", {}).items():
            lines += [f'{prefix}_replica_calls_total{{replica="{_label(rid)}",kind="{kind}",windows="{n}"}} {c}'
                      for n, c in sizes.items()]
    for key, help_text in (("call_seconds", "Recent network call times in the replica, by kind."),
                           ("step_seconds", "Recent request-to-answer times through Ray seen by this front end, by kind.")):
        lines += [f"# HELP {prefix}_replica_{key} {help_text}", f"# TYPE {prefix}_replica_{key} summary"]
        field = "call_ms" if key == "call_seconds" else "step_ms"
        for rid, r in replicas.items():
            for kind, p in r.get(field, {}).items():
                if p:
                    lines += [f'{prefix}_replica_{key}{{replica="{_label(rid)}",kind="{kind}",quantile="{q}"}} '
                              f'{p[k] / 1000:.6f}' for q, k in (("0.5", "p50"), ("0.99", "p99"))]
    return "\n".join(lines) + "\n"
