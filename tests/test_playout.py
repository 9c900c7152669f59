"""The adaptive jitter buffer (clients/playout.py) and its browser twin (clients/web/playout.js):
sized from the measured arrival jitter, bounded slew, fixed delay on request, and both
implementations giving the same delays and samples for the same arrivals (the JS one run in
headless Chromium)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from clients.playout import Playout

REPO = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = pathlib.Path("/usr/bin/chromium")


def server_arrivals(seconds: float = 8.0, hop_frames: int = 2, compute: float = 0.02, jitter: float = 0.0,
                    seed: int = 0, stalls=()):
    """(audio_time, arrival) of 25 fps frames as a streaming server sends them: each step's
    hop_frames frames together, once its audio (plus 80 ms lookahead) is in and the step computed."""
    rng = np.random.default_rng(seed)
    out = []
    n_steps = int(seconds * 25 / hop_frames)
    for s in range(n_steps):
        first = s * hop_frames
        ready = (first + hop_frames) / 25 + 0.08
        emit = ready + compute + abs(rng.normal(0, jitter)) + sum(d for t, d in stalls if abs(t - ready) < 0.05)
        for j in range(first, first + hop_frames):
            out.append(((j + 0.5) / 25, emit + 0.001))
    return out


def drive(p: Playout, arrivals, rate: float = 60.0):
    """Push the arrivals in time order while sampling at ``rate``; the delay after each sample."""
    events = sorted([(t, 0, a) for a, t in arrivals] + [(k / rate, 1, None) for k in range(int(arrivals[-1][1] * rate))])
    delays = []
    for now, kind, audio_time in events:
        if kind == 0:
            p.push(audio_time, np.array([audio_time]), now)
        else:
            p.sample(now)
            delays.append(p.delay)
    return np.array(delays)


def test_fixed_delay_plays_behind_the_earliest_arrival():
    p = Playout(delay=0.1)
    p.push(0.02, np.array([0.0]), now=1.0)
    p.push(0.06, np.array([1.0]), now=1.0)  # earlier relative to its audio: base drops to 0.94
    assert p.base == pytest.approx(0.94)
    assert p.play_time(1.1) == pytest.approx(1.1 - 0.94 - 0.1)
    v, _ = p.sample(1.06 + 0.04 / 2)  # halfway between the two frames
    assert v[0] == pytest.approx(0.5)
    drive(p, server_arrivals(2.0, compute=0.02, jitter=0.02))
    assert p.delay == 0.1  # never adapts


def test_adaptive_delay_is_the_step_spread_not_a_fixed_100_ms():
    """Two frames per 80 ms step: the first comes one frame period (40 ms) 'late'; the buffer
    settles a little above that, well under the old fixed 100 ms, without running dry."""
    p = Playout()
    delays = drive(p, server_arrivals(8.0, hop_frames=2, compute=0.02, jitter=0.002))
    settled = delays[len(delays) // 2:]
    assert 0.04 <= settled.min() and settled.max() <= 0.06
    under_before = p.underruns
    drive(p, server_arrivals(4.0, hop_frames=2, compute=0.02, jitter=0.002, seed=1))
    assert p.underruns - under_before <= 1


def test_one_frame_steps_need_almost_no_buffer():
    p = Playout()
    delays = drive(p, server_arrivals(8.0, hop_frames=1, compute=0.02, jitter=0.001))
    assert delays[-1] < 0.02


def test_delay_grows_with_jitter_and_shrinks_at_a_bounded_rate():
    p = Playout(shrink=0.1)
    calm = server_arrivals(6.0, compute=0.02, jitter=0.001)
    rough = [(a + 6.0, t + 6.0) for a, t in server_arrivals(6.0, compute=0.02, jitter=0.05, seed=2)]
    calm2 = [(a + 12.0, t + 12.0) for a, t in server_arrivals(8.0, compute=0.02, jitter=0.001, seed=3)]
    delays = drive(p, calm + rough + calm2)
    d_calm, d_rough = delays[int(5.5 * 60)], delays[int(11.5 * 60)]
    assert d_rough > d_calm + 0.03
    assert delays.max() <= 0.15 + 1e-9  # capped: a stalling server is shown late, not buffered for
    steps = np.diff(delays)
    assert steps.min() >= -0.1 / 60 - 1e-9  # never shrinks faster than 0.1 s per s
    assert delays[-1] < d_rough - 0.02  # and it does come back down


def test_reset_reanchors():
    p = Playout()
    drive(p, server_arrivals(2.0))
    p.push(0.02, np.array([0.0]), now=100.0, reset=True)
    assert p.resets == 1 and p.times == [0.02] and p.base == pytest.approx(100.0 - 0.02)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed")
def test_browser_playout_matches_python():
    from playwright.sync_api import sync_playwright

    arrivals = server_arrivals(5.0, compute=0.02, jitter=0.015, seed=4)
    events = sorted([(t, 0, a) for a, t in arrivals] + [(k / 60, 1, 0.0) for k in range(int(arrivals[-1][1] * 60))])
    p = Playout()
    expected = []
    for now, kind, a in events:
        if kind == 0:
            p.push(a, np.array([a, 2 * a]), now)
        else:
            v, _ = p.sample(now)
            expected.append([p.delay, None if v is None else float(v[1])])
    src = (REPO / "clients" / "web" / "playout.js").read_text().replace("export class", "class")
    script = src + """
    ;(() => { const p = new Playout(); const out = [];
      for (const [now, kind, a] of EVENTS) {
        if (kind === 0) p.push(a, Float64Array.from([a, 2 * a]), now);
        else { const r = p.sample(now); out.push([p.delay, r.values === null ? null : r.values[1]]); }
      }
      return out; })()"""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox",
                                     "--disable-gpu", "--no-first-run", "--disable-background-networking",
                                     "--disable-component-update", "--disable-sync"])
        try:
            got = browser.new_page().evaluate(script.replace("EVENTS", json.dumps(events)))
        finally:
            browser.close()
    assert len(got) == len(expected)
    got_d = np.array([g[0] for g in got])
    exp_d = np.array([e[0] for e in expected])
    np.testing.assert_allclose(got_d, exp_d, atol=1e-9)
    both = [(g[1], e[1]) for g, e in zip(got, expected) if e[1] is not None]
    np.testing.assert_allclose(*zip(*both), atol=1e-9)
