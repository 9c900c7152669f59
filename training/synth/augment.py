"""Audio augmentation so that a model trained on espeak hears real microphones too.

Applied to the whole clip in this order: channel filter (low-pass, high-pass or EQ), additive
noise at an SNR measured against the active speech, gain, DC offset, clipping to 16-bit range.
Only the audio changes; the motion ground truth does not.
"""

from __future__ import annotations

import numpy as np

from diffposetalk.units import FRAME_SAMPLES, SAMPLE_RATE

NOISE_KINDS = ("none", "white", "pink", "babble")
FILTER_KINDS = ("none", "lowpass", "highpass", "eq")


def _freqs(n: int) -> np.ndarray:
    return np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)


def _apply_gain_curve(audio: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Zero-phase filtering of the whole clip by a magnitude response on _freqs(len(audio))."""
    return np.fft.irfft(np.fft.rfft(audio.astype(np.float64)) * gain, n=len(audio))


def _bell(f: np.ndarray, centre: float, octaves: float) -> np.ndarray:
    return np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / centre) / octaves) ** 2)


def _filter(audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    kind = str(rng.choice(FILTER_KINDS, p=[0.3, 0.25, 0.2, 0.25]))
    f = _freqs(len(audio))
    if kind == "lowpass":  # telephone-ish / cheap microphones
        fc, order = float(rng.uniform(2500, 7000)), int(rng.integers(2, 5))
        curve = 1.0 / np.sqrt(1.0 + (f / fc) ** (2 * order))
        params = {"cutoff_hz": fc, "order": order}
    elif kind == "highpass":  # rumble filters, small loudspeakers
        fc, order = float(rng.uniform(60, 400)), int(rng.integers(1, 4))
        curve = 1.0 / np.sqrt(1.0 + (fc / np.maximum(f, 1e-3)) ** (2 * order))
        params = {"cutoff_hz": fc, "order": order}
    elif kind == "eq":  # one bell on a log-frequency axis
        centre, gain_db = float(rng.uniform(200, 5000)), float(rng.uniform(-9, 9))
        width = float(rng.uniform(0.3, 1.5))
        curve = 10 ** (gain_db / 20 * _bell(f, centre, width))
        params = {"centre_hz": centre, "gain_db": gain_db, "octaves": width}
    else:
        return audio.astype(np.float64), {"kind": "none"}
    return _apply_gain_curve(audio, curve), {"kind": kind, **params}


def coloured_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n samples of unit-scale 'white', 'pink' (1/f power) or 'babble' noise."""
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    if kind == "pink":  # 1/f power
        return _apply_gain_curve(white, 1.0 / np.sqrt(np.maximum(_freqs(n), 20.0)))
    # babble-like: speech-band noise whose loudness follows several overlapping syllable
    # rhythms, like a crowd of distant talkers
    band = _apply_gain_curve(white, _bell(_freqs(n), 600.0, 1.2))
    t = np.arange(n) / SAMPLE_RATE
    envelope = np.zeros(n)
    for _ in range(int(rng.integers(3, 7))):
        rate, phase = rng.uniform(2.5, 6.0), rng.uniform(0, 2 * np.pi)
        envelope += np.maximum(0.0, np.sin(2 * np.pi * rate * t + phase)) ** 2
    return band * (0.3 + envelope)


def active_rms(audio: np.ndarray, frame: int = FRAME_SAMPLES) -> float:
    """RMS over the louder half of 40 ms frames (speech, not the silences between it)."""
    n = len(audio) // frame * frame
    if n == 0:
        return float(np.sqrt(np.mean(audio ** 2))) if len(audio) else 0.0
    energy = np.mean(audio[:n].reshape(-1, frame) ** 2, axis=1)
    loud = energy[energy >= np.median(energy)]
    return float(np.sqrt(loud.mean()))


def augment(audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Return the augmented float32 clip in [-1, 1) and the parameters that were drawn."""
    out, filt = _filter(audio, rng)
    params: dict = {"filter": filt}

    kind = str(rng.choice(NOISE_KINDS, p=[0.2, 0.25, 0.3, 0.25]))
    params["noise"] = {"kind": kind}
    if kind != "none":
        snr_db = float(rng.uniform(5, 40))
        noise = coloured_noise(kind, len(out), rng)
        noise *= active_rms(out) / max(float(np.sqrt(np.mean(noise ** 2))), 1e-12) / 10 ** (snr_db / 20)
        out = out + noise
        params["noise"]["snr_db"] = snr_db

    gain_db = float(rng.uniform(-20, 6))
    out = out * 10 ** (gain_db / 20)
    params["gain_db"] = gain_db

    dc = float(rng.uniform(-0.02, 0.02)) if rng.random() < 0.2 else 0.0
    out = out + dc
    params["dc_offset"] = dc
    return np.clip(out, -1.0, 32767 / 32768).astype(np.float32), params
