"""Room noise for noise-robust audio training: what a microphone hears when nobody speaks, and
under speech (docs/STREAMING.md "Streaming audio encoder").

Kinds: white and pink room tone, mains hum (50/60 Hz and harmonics), fan (low-frequency rumble
with a blade tone), babble (training/synth/augment.py's crowd noise). Also a mild synthetic room
reverb and a random channel colouration (augment.py's filters). All take a numpy Generator, so a
seed reproduces a draw."""

from __future__ import annotations

import numpy as np

from diffposetalk.units import SAMPLE_RATE
from training.synth.augment import _apply_gain_curve, _filter, _freqs, active_rms, coloured_noise

ROOM_KINDS = ("white", "pink", "hum", "fan", "babble")


def dbfs(level_db: float) -> float:
    """RMS amplitude of a level in dB relative to full scale."""
    return 10 ** (level_db / 20)


def room_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) float64 noise of ``kind`` at unit RMS."""
    if kind in ("white", "pink", "babble"):
        x = coloured_noise(kind, n, rng)
    elif kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        base = 50.0 if rng.random() < 0.5 else 60.0
        x = np.zeros(n)
        for h in range(1, int(rng.integers(2, 8)) + 1):
            x += rng.uniform(0.1, 1.0) / h * np.sin(2 * np.pi * base * h * t + rng.uniform(0, 2 * np.pi))
        x += 0.05 * rng.standard_normal(n)  # hum is never alone
    elif kind == "fan":
        t = np.arange(n) / SAMPLE_RATE
        rumble = _apply_gain_curve(rng.standard_normal(n), 1.0 / np.maximum(_freqs(n), 30.0))
        blade = rng.uniform(80, 400)
        x = rumble / (np.std(rumble) + 1e-12) + rng.uniform(0.0, 0.5) * np.sin(2 * np.pi * blade * t)
    else:
        raise ValueError(f"unknown room noise {kind!r} (one of {', '.join(ROOM_KINDS)})")
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def reverb(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mild synthetic room: exponentially decaying noise impulse response (RT60 0.1-0.5 s),
    mixed 10-40 % wet, convolved by FFT."""
    rt60 = rng.uniform(0.1, 0.5)
    n_ir = int(rt60 * SAMPLE_RATE)
    t = np.arange(n_ir) / SAMPLE_RATE
    ir = rng.standard_normal(n_ir) * np.exp(-6.9 * t / rt60)
    ir /= np.sqrt(np.sum(ir ** 2)) + 1e-12
    n = len(audio) + n_ir - 1
    size = 1 << (n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(ir, size), size)[:len(audio)]
    mix = rng.uniform(0.1, 0.4)
    return (1 - mix) * audio + mix * wet


def colour(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random cheap-microphone colouration (low-pass, high-pass, EQ bell or none)."""
    return _filter(audio, rng)[0]


def speech_rms(audio: np.ndarray) -> float:
    return active_rms(audio)
