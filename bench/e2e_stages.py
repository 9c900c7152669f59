"""Glass-to-glass bookkeeping: from what the page, the server's frame headers and the clients
recorded (all on one machine's clock, seconds since the Unix epoch) to per-onset latencies and
their breakdown into stages. Pure functions over arrays: no browser, no server.

For an onset at stream position p (seconds since audio_start) and F, the first frame whose jaw
opening crosses the threshold upwards near p (its step's frames share one emit time; the step
needed audio up to ``need`` = end of its last frame + lookahead):

    audio window      capture(need) - capture(p)     the model waits for hop + lookahead audio
    capture+upstream  sent(need) - capture(need)     the mic block filling up, the page posting it
    server            emit(F) - sent(need)           loopback upstream, resampler, queue, compute
    network           arrival(F) - emit(F)           the socket to the client
    client buffer     shown(F) - arrival(F)          the jitter buffer (and a bridge's smoothing)
    render            presented - drawn              the drawn frame waits for the next display frame

capture(i) of stream sample i is offset + i / rate, the offset being the lower envelope of
(send time - block end / rate) over recent blocks (see Upstream.capture_time). The stages
telescope, so they sum to the total exactly."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ENVELOPE_BLOCKS = 100  # 2 s of 20 ms microphone blocks
# A stream position that falls on a block's end (each step's audio ends on a 20 ms boundary, and
# so do the page's 20 ms blocks) must find that block, not the next one, whatever the rounding of
# seconds x rate (47.16 s x 44100 Hz overshoots by 4e-10 samples): positions are compared to block
# ends within this many samples.
POSITION_SLACK = 1e-6
STAGES = ("audio_window", "capture_upstream", "server", "network", "client_buffer", "render")


@dataclass
class Upstream:
    """The page's microphone upstream: block send times (s), sizes and 1 ms peak envelope."""
    rate: int
    start: float  # audio_start sent (s)
    sent: np.ndarray  # (K,) send time of each block
    sizes: np.ndarray  # (K,) samples per block
    envelope: np.ndarray  # (S/ms,) peak |x| per millisecond of stream

    def __post_init__(self):
        self.ends = np.cumsum(self.sizes)
        lag = self.sent - self.ends / self.rate
        self.offsets = np.array([lag[max(0, k - ENVELOPE_BLOCKS + 1):k + 1].min() for k in range(len(lag))])

    def capture_time(self, stream_s: float) -> float:
        """When stream position ``stream_s`` was captured (s, epoch); NaN past the last block.
        The microphone delivers samples at its steady rate, so capture time = offset + i / rate,
        the offset being the lower envelope of (send - block end / rate) over the last
        ``ENVELOPE_BLOCKS`` blocks: the blocks the page sent at once define it, and a block the
        page posted late (a busy main thread) shows that delay as capture+upstream."""
        i = stream_s * self.rate
        k = self._block(i)
        if k >= len(self.ends):
            return float("nan")
        return float(self.offsets[k] + i / self.rate)

    def sent_time(self, stream_s: float) -> float:
        """When the block holding stream position ``stream_s`` left the page."""
        k = self._block(stream_s * self.rate)
        return float(self.sent[k]) if k < len(self.sent) else float("nan")

    def _block(self, sample: float) -> int:
        """Index of the block holding the stream up to ``sample`` (the first whose end reaches it)."""
        return int(np.searchsorted(self.ends, sample - POSITION_SLACK, side="left"))


@dataclass
class Frames:
    """One client's view of the upstream's frames: arrival, header times and jaw opening."""
    arrival: np.ndarray
    audio_time: np.ndarray
    emit: np.ndarray
    jaw: np.ndarray

    def order(self) -> Frames:
        i = np.argsort(self.audio_time, kind="stable")
        return Frames(self.arrival[i], self.audio_time[i], self.emit[i], self.jaw[i])


@dataclass
class Onset:
    stream_s: float  # position in the upstream (s since audio_start)
    capture: float  # epoch s


@dataclass
class PathResult:
    """Per-onset latencies of one client path (ms) and their stages."""
    name: str
    rows: list[dict] = field(default_factory=list)
    missed: int = 0  # onsets with no crossing found in this path

    def summary(self) -> dict:
        ok = [r for r in self.rows if np.isfinite(r["total_ms"])]
        out = {"onsets": len(ok), "missed": self.missed}
        for key in ("total_ms", *(f"{s}_ms" for s in STAGES)):
            vals = np.array([r[key] for r in ok if key in r and np.isfinite(r[key])])
            if len(vals):
                out[key] = {"p50": round(float(np.percentile(vals, 50)), 1),
                            "p95": round(float(np.percentile(vals, 95)), 1),
                            "max": round(float(vals.max()), 1)}
        return out


def find_onsets(up: Upstream, level: float | None = None, quiet_s: float = 0.25) -> list[Onset]:
    """Onsets in the captured audio: the first millisecond at or above ``level`` (default 15 % of
    the 99th-percentile peak) after at least ``quiet_s`` below it."""
    env = up.envelope
    if not len(env):
        return []
    level = 0.15 * float(np.percentile(env, 99)) if level is None else level
    quiet_ms, out, below = round(quiet_s * 1000), [], 0
    for i, v in enumerate(env):
        if v >= level:
            if below >= quiet_ms:
                stream_s = i / 1000
                out.append(Onset(stream_s, up.capture_time(stream_s)))
            below = 0
        else:
            below += 1
    return [o for o in out if np.isfinite(o.capture)]


def mouth_threshold(values: np.ndarray, share: float = 0.3) -> float:
    """rest + share x (open - rest): rest = 10th, open = 90th percentile of the mouth values."""
    lo, hi = np.percentile(values, [10, 90])
    return float(lo + share * (hi - lo))


def first_crossing(frames: Frames, onset: Onset, threshold: float, anticipate_s: float = 0.15,
                   until_s: float = 0.8) -> int | None:
    """Index (audio-time order) of the first frame from ``onset - anticipate_s`` on whose jaw is at
    or above ``threshold`` while the frame before was below; None when the mouth was already open
    at the search start or never opens within ``until_s``."""
    t = frames.audio_time
    idx = np.flatnonzero((t >= onset.stream_s - anticipate_s) & (t <= onset.stream_s + until_s))
    if not len(idx) or frames.jaw[idx[0]] >= threshold:
        return None
    for i in idx[1:]:
        if frames.jaw[i] >= threshold:
            return int(i)
    return None


def upstream_stages(up: Upstream, frames: Frames, i: int, onset: Onset, lookahead_s: float) -> dict:
    """audio window, capture+upstream and server stages for frame ``i`` (ms) and when it arrived."""
    step = np.flatnonzero(frames.emit == frames.emit[i])
    need = float(frames.audio_time[step].max()) + 0.02 + lookahead_s
    cap_need, sent_need = up.capture_time(need), up.sent_time(need)
    return {"frame_audio_s": round(float(frames.audio_time[i]), 3), "need_s": round(need, 3),
            "audio_window_ms": (cap_need - onset.capture) * 1000,
            "capture_upstream_ms": (sent_need - cap_need) * 1000,
            "server_ms": (frames.emit[i] - sent_need) * 1000,
            "network_ms": (frames.arrival[i] - frames.emit[i]) * 1000}


def measure_path(name: str, up: Upstream, onsets: list[Onset], frames: Frames, lookahead_s: float,
                 shown=None, threshold: float | None = None) -> PathResult:
    """Latency per onset on one path. ``shown(onset, frame_index, threshold)`` -> (drawn, presented)
    epoch s of the first output showing the open mouth (None: the frame's arrival is the output,
    as for a plain WebSocket client), or None when the output never showed it."""
    frames = frames.order()
    threshold = mouth_threshold(frames.jaw) if threshold is None else threshold
    res = PathResult(name)
    for onset in onsets:
        i = first_crossing(frames, onset, threshold)
        if i is None:
            res.missed += 1
            continue
        row = {"onset_s": round(onset.stream_s, 3), "capture": onset.capture,
               **upstream_stages(up, frames, i, onset, lookahead_s)}
        if shown is None:
            drawn = presented = float(frames.arrival[i])
        else:
            out = shown(onset, i, frames, threshold)
            if out is None:
                res.missed += 1
                continue
            drawn, presented = out
        row["client_buffer_ms"] = (drawn - frames.arrival[i]) * 1000
        row["render_ms"] = (presented - drawn) * 1000
        row["total_ms"] = (presented - onset.capture) * 1000
        row["shown"] = presented
        res.rows.append(row)
    return res


def first_output(times: np.ndarray, values: np.ndarray, after: float, threshold: float) -> int | None:
    """Index of the first output at or after ``after`` whose value is at or above ``threshold``."""
    idx = np.flatnonzero((times >= after) & (values >= threshold))
    return int(idx[0]) if len(idx) else None
