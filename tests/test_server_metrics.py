"""Server metrics: histogram buckets, Prometheus text, quantiles from buckets (server and
serve-bench's reading of /metrics agree)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.server_load import histogram_delta, parse_histogram, quantile_from_cumulative
from server.metrics import Histogram, ServerMetrics


def test_histogram_counts_buckets_and_estimates_quantiles():
    h = Histogram("x_seconds", "test", (0.001, 0.002, 0.004, 0.008))
    values = np.random.default_rng(0).uniform(0.0, 0.004, 4000)
    for v in values:
        h.observe(float(v))
    h.observe(1.0)  # +Inf bucket
    counts, total, n = h.snapshot()
    assert n == 4001 and counts[-1] == 1 and total == pytest.approx(values.sum() + 1.0)
    assert h.quantile(0.5) == pytest.approx(0.002, abs=1e-4)  # uniform on [0, 4 ms]
    assert h.quantile(0.95) == pytest.approx(0.0038, abs=1e-4)
    assert h.quantile(1.0) == 0.008  # the +Inf bucket answers with the largest bound
    assert Histogram("e", "", (1.0,)).quantile(0.5) is None


def test_prometheus_text_round_trips_through_the_bench_parser():
    m = ServerMetrics()
    for v in (0.00004, 0.0001, 0.0003, 0.0003, 0.002):
        m.overhead.observe(v)
    m.add_frames(7)
    m.add_dropped('odd"name', 2)
    text = m.render(viewers=3, sessions=2)
    assert "dpt_frames_total 7" in text and "dpt_viewers 3" in text and "dpt_sessions 2" in text
    assert 'dpt_dropped_frames_total{session="odd\\"name"} 2' in text
    for line in text.splitlines():  # every sample line is "name{labels} value"
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])
    bounds, cum, total, n = parse_histogram(text, "dpt_server_overhead_seconds")
    assert n == 5 == cum[-1] and bounds[-1] == float("inf") and total == pytest.approx(0.00274)
    assert quantile_from_cumulative(bounds, cum, 0.5) == pytest.approx(m.overhead.quantile(0.5))
    assert quantile_from_cumulative(bounds, cum, 0.95) == pytest.approx(m.overhead.quantile(0.95))


def test_quantiles_of_a_window_come_from_bucket_differences():
    m = ServerMetrics()
    for _ in range(100):
        m.overhead.observe(0.02)  # before the window: slow
    before = parse_histogram(m.render(0, 0), "dpt_server_overhead_seconds")
    for _ in range(100):
        m.overhead.observe(0.00015)  # in the window: fast
    after = parse_histogram(m.render(0, 0), "dpt_server_overhead_seconds")
    bounds, cum, total, n = histogram_delta(before, after)
    assert n == 100 and total == pytest.approx(0.015)
    assert 0.0001 < quantile_from_cumulative(bounds, cum, 0.95) <= 0.0002
