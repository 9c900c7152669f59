"""Drive a session from an audio source until the stream ends, the caller stops it, or the source
is lost — in every case the session is finished cleanly (remaining frames emitted) and the
source closed (run_stream); or from a whole clip already in memory (stream_array)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streaming.session import Frame, StreamSession
from streaming.sources import AudioSource, AudioSourceLost

log = logging.getLogger("dpt_live.stream")


@dataclass
class RunResult:
    frames: int
    samples: int  # 16 kHz samples consumed
    reason: str  # "end of audio", "stopped", "interrupted" or "source lost: ..."


def run_stream(source: AudioSource, session: StreamSession,
               on_frames: Callable[[list[Frame]], None] | None = None,
               stop: threading.Event | None = None) -> RunResult:
    reason = "end of audio"
    emitted = 0

    def deliver(frames: list[Frame]) -> None:
        nonlocal emitted
        emitted += len(frames)
        if frames and on_frames is not None:
            on_frames(frames)

    session.run_async(deliver)  # steps on a batching scheduler: frames come from its worker, feed returns at once
    try:
        for block in source.blocks():
            deliver(session.feed(block.samples, block.time))
            if stop is not None and stop.is_set():
                reason = "stopped"
                break
    except AudioSourceLost as exc:
        log.error("audio source lost: %s; ending the session with the audio received so far", exc)
        reason = f"source lost: {exc}"
    except KeyboardInterrupt:
        log.info("interrupted; ending the session")
        reason = "interrupted"
    finally:
        source.close()
    deliver(session.finish())
    return RunResult(emitted, session.ring.written, reason)


def stream_array(session: StreamSession, audio: np.ndarray, block: int | None = None,
                 on_frames: Callable[[list[Frame]], None] | None = None) -> list[Frame]:
    """Stream a clip in memory through ``session`` as fast as it takes it — in ``block``-sample
    pieces as a live source delivers audio (None: all at once) — then finish it. Returns every
    frame; ``on_frames`` also gets them as they come. For benchmarks, evaluation and checks: no
    pacing, no source to close, and Ctrl-C is not caught (run_stream handles live sources)."""
    frames: list[Frame] = []

    def deliver(new: list[Frame]) -> None:
        frames.extend(new)
        if new and on_frames is not None:
            on_frames(new)

    step = block or max(len(audio), 1)
    for i in range(0, len(audio), step):
        deliver(session.feed(audio[i:i + step]))
    deliver(session.finish())
    return frames
