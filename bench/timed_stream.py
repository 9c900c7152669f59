"""One timed stream, the unit every benchmark of the family measures: a session built through
``streaming.factory.build_session`` with a step recorder (compute and audio-feature time per
step, on the benchmark's clock), a timer around denoising, and optionally a tap that keeps every
window's audio features; the audio fed in 20 ms blocks, as fast as possible or in real time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bench.common import BLOCK
from bench.cost import SampleTimer
from diffposetalk.units import SAMPLE_RATE
from streaming.factory import build_session
from streaming.report import StreamRecorder


class FeatureTap:
    """Wraps an audio feature engine and keeps every window's features (short benchmark runs only)."""

    def __init__(self, inner):
        self.inner, self.outputs = inner, []
        self.window_samples, self.n_frames, self.feature_dim = inner.window_samples, inner.n_frames, inner.feature_dim
        # a streaming encoder hands out the window's frames from the first real one (no context)
        self.streaming = bool(getattr(inner, "streaming", False))

    def features(self, audio):
        out = self.inner.features(audio)
        self.outputs.append(out)
        return out

    def push(self, audio):
        self.inner.push(audio)

    def frames(self, start, stop):
        out = self.inner.frames(start, stop)
        self.outputs.append(out)
        return out

    def silence(self):
        return self.inner.silence()


@dataclass
class TimedSession:
    session: object
    recorder: StreamRecorder
    denoise: SampleTimer
    setup_s: float  # wall time to build the session (export on first use included)
    tap: FeatureTap | None = None


def make_session(loaded, sampler, guidance, style, config, backend: tuple[str, str] = ("torch", "fp32"),
                 threads: int = 1, clock: Callable[[], float] = time.perf_counter,
                 tap_features: bool = False, scheduler=None) -> TimedSession:
    """scheduler: a batching scheduler the session's network calls go through (its backend)."""
    rec = StreamRecorder()
    t0 = time.perf_counter()
    session = build_session(loaded, sampler, guidance, config, style, on_step=rec.on_step, backend=backend[0],
                            precision=backend[1], threads=threads, clock=clock, scheduler=scheduler)
    setup = time.perf_counter() - t0
    session.motion = timer = SampleTimer(session.motion, clock)
    tap = None
    if tap_features:
        session.audio = tap = FeatureTap(session.audio)
    return TimedSession(session, rec, timer, setup, tap)


def feed(timed: TimedSession, audio: np.ndarray, realtime: bool = False) -> float:
    """Feed ``audio`` in 20 ms blocks: as fast as possible, or each block when it would have been
    spoken (stamped with that time, so queueing behind a slow step counts as latency). Returns
    the wall time it took."""
    session, rec = timed.session, timed.recorder
    if realtime:  # as a server feeds a session: steps on a batching scheduler do not block the feed
        session.run_async(rec.on_frames)
    t0 = time.perf_counter()
    for i in range(0, len(audio), BLOCK):
        chunk = audio[i:i + BLOCK]
        if realtime:
            due = t0 + (i + len(chunk)) / SAMPLE_RATE
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            rec.on_frames(session.feed(chunk, arrival=due))
        else:
            rec.on_frames(session.feed(chunk))
    rec.on_frames(session.finish())
    return time.perf_counter() - t0


@dataclass
class StreamRun:
    compute: list[float]  # per step, on the benchmark's clock
    features: list[float]  # the audio-feature part of each step
    denoise: list[float]  # the denoising part of each step
    frames: int
    measured_latency: list[float] | None  # emit - arrival per frame (realtime runs only)
    spec: object
    setup_s: float
    wall_s: float
    engine: str  # what the session actually ran on (build_session's description)
    recorder: StreamRecorder = field(repr=False)
    streamed_features: np.ndarray | None = field(default=None, repr=False)  # per frame, with tap_features


def stream_once(loaded, sampler, guidance, style, config, audio, backend=("torch", "fp32"), threads: int = 1,
                clock: Callable[[], float] = time.perf_counter, realtime: bool = False,
                tap_features: bool = False) -> StreamRun:
    timed = make_session(loaded, sampler, guidance, style, config, backend, threads, clock, tap_features)
    wall = feed(timed, audio, realtime)
    rec, session = timed.recorder, timed.session
    feats = None
    if timed.tap is not None and rec.steps:  # the features of the frames each step emitted
        ctx = 0 if timed.tap.streaming else session.spec.context
        feats = np.concatenate([out[ctx:ctx + st.n_frames] for out, st in zip(timed.tap.outputs, rec.steps)])
    return StreamRun([s.compute_s for s in rec.steps], [s.features_s for s in rec.steps], timed.denoise.seconds,
                     len(rec.frames), [f.latency for f in rec.frames] if realtime else None, session.spec,
                     timed.setup_s, wall, getattr(session, "backend", backend[0]), rec, feats)
