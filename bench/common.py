"""What every benchmark of the family shares: the clock steps are timed with, resident memory,
the audio clip, the style vector a model is driven with, and where random-weight models are cached."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from diffposetalk.units import FRAME_SAMPLES, SAMPLE_RATE

BLOCK = 320  # 20 ms source blocks, as a microphone delivers them and as the latency replay assumes
CLOCKS = ("wall", "cpu")


def choose_clock(name: str, threads: int) -> Callable[[], float]:
    """wall: time.perf_counter. cpu: this thread's CPU time — on a shared machine it measures what
    a step costs on a dedicated core (other processes' load does not count); 1 thread only."""
    if name not in CLOCKS:
        raise UserError(f"--clock: unknown clock {name!r} (choose from {', '.join(CLOCKS)})")
    if name == "cpu" and threads != 1:
        raise UserError("--clock cpu measures the calling thread only: use --threads 1")
    return time.thread_time if name == "cpu" else time.perf_counter


def rss_mb() -> float:
    """Resident memory of this process in MB (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def load_clip(path: str | Path | None, seconds: float | None, seed: int) -> tuple[np.ndarray, str]:
    """(16 kHz mono float32 audio, its description). ``path`` None or 'synthetic': ``seconds`` of
    speech-like test audio; else the file's first ``seconds`` (None: all of it)."""
    if path is None or str(path) == "synthetic":
        from diffposetalk.synth_audio import speechlike

        if seconds is None or seconds <= 0:
            raise UserError("--seconds: synthetic audio needs a length > 0")
        return speechlike(seconds, seed), f"synthetic speech-like audio (seed {seed})"
    from diffposetalk.audio_io import load_audio

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--audio: file not found: {p}")
    audio = load_audio(p)
    n = len(audio) if seconds is None else min(len(audio), round(seconds * SAMPLE_RATE))
    if n < FRAME_SAMPLES:
        raise UserError(f"--audio {p}: {n / SAMPLE_RATE:.3f} s is shorter than one 40 ms motion frame")
    return audio[:n].astype(np.float32), str(p)


def pick_style(loaded, name: str | None, seed: int, random_fallback: bool = True) -> tuple[np.ndarray | None, str]:
    """The style vector a benchmark drives ``loaded`` with, and how it was chosen.

    random_fallback (`bench`): --style, else the 'default' preset, else the first preset, else a
    seeded random vector, so that style guidance (the reference's third pass) is always measured;
    a --style the model does not take is an error. Without it (`stream-bench`, as `stream`):
    --style, else the 'default' preset, else none; a --style the model does not take is ignored."""
    from streaming.style import choose_style

    if not loaded.config.use_style and not random_fallback:
        name = None  # stream-bench mixes models: a --style one of them does not take is ignored
    if random_fallback:
        chosen = choose_style(loaded, name, any_preset=True, random_seed=seed)
    else:
        chosen = choose_style(loaded, name)
    return chosen.vector, chosen.label if chosen.vector is not None or not loaded.config.use_style else "none"


def default_cache_dir() -> Path:
    """Where random-weight architectures are built once: the user cache ($DPT_LIVE_CACHE, else
    ~/.cache/dpt-live) / bench-models, never the checkout (the full-size one is ~500 MB)."""
    from engines.artefacts import cache_root

    return cache_root() / "bench-models"
