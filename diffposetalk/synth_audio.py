"""Speech-like test audio without a speech corpus: voiced "syllables" (a wandering pitch with
harmonics, ~3-6 per second, random lengths) separated by pauses, over faint noise. Generated one
second at a time from (seed, second), so an hour-long stream costs no memory and any stretch can
be regenerated exactly."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from diffposetalk.units import SAMPLE_RATE


def speechlike_second(index: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, index])
    n = SAMPLE_RATE
    out = rng.normal(scale=0.002, size=n)
    t = 0.02 + rng.uniform(0, 0.1)
    while True:
        dur = rng.uniform(0.08, 0.25)
        if t + dur > 0.98:
            break
        s, m = int(t * SAMPLE_RATE), int(dur * SAMPLE_RATE)
        tt = np.arange(m) / SAMPLE_RATE
        f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 4) * tt))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        voice = sum(np.sin(k * phase) / k for k in range(1, 8))
        env = np.sin(np.pi * tt / dur) ** 2  # syllable envelope: opens and closes smoothly
        out[s:s + m] += rng.uniform(0.05, 0.3) * env * voice
        t += dur + rng.choice([rng.uniform(0.02, 0.08), rng.uniform(0.15, 0.4)], p=[0.7, 0.3])
    return out.astype(np.float32)


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    n = round(seconds * SAMPLE_RATE)
    whole = -(-n // SAMPLE_RATE)
    return np.concatenate([speechlike_second(i, seed) for i in range(whole)])[:n]


def speechlike_blocks(seconds: float, block: int = 320, seed: int = 0) -> Iterator[np.ndarray]:
    """The same audio as speechlike(seconds, seed), in blocks of ``block`` samples."""
    n = round(seconds * SAMPLE_RATE)
    buf = np.zeros(0, np.float32)
    done, sec = 0, 0
    while done < n:
        while len(buf) < block and sec * SAMPLE_RATE < n:
            buf = np.concatenate([buf, speechlike_second(sec, seed)])
            sec += 1
        take = min(block, n - done, len(buf))
        yield buf[:take]
        buf, done = buf[take:], done + take
