"""Ground-truth FLAME motion at 25 fps from phoneme timings (the SynthTalk articulation model).

Mouth: each phoneme contributes its viseme targets over its interval; the target track is
advanced by the speaker's anticipation (the mouth leads the sound) and smoothed with a
zero-phase Gaussian (coarticulation), then jaw -> pose[3] and features -> exp[0:5] through
visemes.EXP_MAP. Head: slow drift plus nods at word onsets. Frame i is the instant i/25 s,
the start of its 640-sample audio block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffposetalk.units import FPS
from training.synth.visemes import EXP_MAP, VISEMES, visemes_of

RATE = 200  # Hz of the internal articulation track (5 ms steps)
N_EXP, N_POSE = 50, 6


@dataclass(frozen=True)
class MotionStyle:
    """The motion part of a speaker's style."""

    mouth_amp: float = 1.0        # scales jaw, opening, rounding, spreading
    smile: float = 0.0            # smile bias (feature units, ~ -0.5..1)
    anticipation: float = 0.06    # s the mouth leads the sound
    smoothing: float = 0.025      # s, Gaussian sigma of coarticulation
    head_amp: float = 1.0         # scales nods and drift
    head_tempo: float = 1.0       # scales drift frequencies and nod speed


def _gaussian_smooth(x: np.ndarray, sigma_steps: float) -> np.ndarray:
    """Zero-phase Gaussian smoothing along axis 0 with edge padding (no lag)."""
    if sigma_steps <= 0:
        return x
    radius = int(np.ceil(4 * sigma_steps))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_steps) ** 2)
    k /= k.sum()
    padded = np.pad(x, [(radius, radius)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    out = np.empty_like(x)
    for j in range(x.shape[1]):
        out[:, j] = np.convolve(padded[:, j], k, mode="valid")
    return out


def target_track(segments: list[tuple[str, float, float]], duration: float) -> np.ndarray:
    """Piecewise-constant viseme targets (RATE Hz, len(FEATURES) columns) for
    (phoneme, start, end) segments; time not covered by a segment is silence."""
    n = int(np.ceil(duration * RATE)) + 1
    track = np.tile(np.array(VISEMES["sil"]), (n, 1))
    for phoneme, start, end in segments:
        t = start
        for viseme, share in visemes_of(phoneme):
            t_end = t + share * (end - start)
            a, b = int(round(t * RATE)), int(round(t_end * RATE))
            track[a:max(b, a + 1)] = VISEMES[viseme]
            t = t_end
    return track


def articulation(segments, duration: float, style: MotionStyle) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed, anticipated articulation at RATE Hz: (times, features (n, 5)) where the
    features are jaw radians and open/closure/round/spread scaled by the speaker."""
    track = target_track(segments, duration + style.anticipation)
    shift = int(round(style.anticipation * RATE))
    led = np.concatenate([track[shift:], np.repeat(track[-1:], shift, axis=0)])  # x(t + lead)
    smooth = _gaussian_smooth(led, style.smoothing * RATE)
    n = int(np.ceil(duration * RATE)) + 1
    feats = smooth[:n].copy()
    feats[:, [0, 1, 3, 4]] *= style.mouth_amp  # contact (closure) is not scaled
    feats[:, 0] = np.clip(feats[:, 0], 0.0, 0.35)
    return np.arange(n) / RATE, feats


def _slow_noise(rng: np.random.Generator, n: int, dims: int, period_frames: float) -> np.ndarray:
    """Unit-std noise that varies over ~period_frames (Gaussian-smoothed white noise)."""
    raw = rng.standard_normal((n + 8 * int(period_frames) + 2, dims))
    sm = _gaussian_smooth(raw, period_frames / 2.5)
    sm = sm[4 * int(period_frames): 4 * int(period_frames) + n]
    return sm / max(float(sm.std()), 1e-8)


def _pulse(times: np.ndarray, start: float, length: float) -> np.ndarray:
    """Raised-cosine bump from start to start+length, peak 1."""
    phase = (times - start) / length
    inside = (phase >= 0) & (phase <= 1)
    return np.where(inside, 0.5 - 0.5 * np.cos(2 * np.pi * np.clip(phase, 0, 1)), 0.0)


def head_pose(rng: np.random.Generator, n_frames: int, words: list[tuple[str, float]],
              style: MotionStyle, offset: np.ndarray) -> np.ndarray:
    """(n_frames, 3) global rotation (pitch, yaw, roll) in radians: drift + word-onset nods."""
    times = np.arange(n_frames) / FPS
    pose = np.tile(offset, (n_frames, 1)).astype(np.float64)
    amps = np.array([0.04, 0.07, 0.025]) * style.head_amp  # std of the drift per axis
    for axis in range(3):  # drift: three sinusoids per axis with random frequency and phase
        freqs = rng.uniform(0.05, 0.3, 3) * style.head_tempo
        phases = rng.uniform(0, 2 * np.pi, 3)
        weights = rng.uniform(0.3, 1.0, 3)
        wave = sum(w * np.sin(2 * np.pi * f * times + p) for w, f, p in zip(weights, freqs, phases))
        pose[:, axis] += amps[axis] * wave / np.sqrt(0.5 * np.sum(weights ** 2))
    nod_len = 0.35 / style.head_tempo
    for word, onset in words:
        stressed = len(word.strip(",.?!")) >= 4
        if rng.random() < (0.7 if stressed else 0.15):
            strength = rng.uniform(0.5, 1.0) * 0.05 * style.head_amp
            pose[:, 0] += strength * _pulse(times, onset - 0.05, nod_len)
            pose[:, 1] += rng.normal(0, 0.25) * strength * _pulse(times, onset - 0.05, nod_len)
    return pose


def make_motion(rng: np.random.Generator, segments: list[tuple[str, float, float]],
                words: list[tuple[str, float]], n_frames: int, style: MotionStyle,
                exp_offset: np.ndarray, head_offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """exp (n_frames, 50) and pose (n_frames, 6) float32 for one clip."""
    duration = n_frames / FPS
    _, feats = articulation(segments, duration, style)
    idx = np.round(np.arange(n_frames) / FPS * RATE).astype(int)
    jaw, mouth = feats[idx, 0], feats[idx, 1:]

    smile = style.smile + 0.15 * _slow_noise(rng, n_frames, 1, 3.0 * FPS)[:, 0]
    exp = np.zeros((n_frames, N_EXP))
    exp[:, :5] = np.column_stack([mouth, smile]) @ EXP_MAP.T
    # Other components: per-speaker offset + slow wandering, smaller for higher components.
    decay = 0.12 / np.sqrt(1.0 + np.arange(N_EXP - 5) / 5.0)
    exp[:, 5:] = exp_offset[5:] + decay * _slow_noise(rng, n_frames, N_EXP - 5, 1.5 * FPS)
    exp[:, :5] += exp_offset[:5]
    exp += rng.normal(0, 0.01, exp.shape)  # tracker noise: every component moves a little

    pose = np.zeros((n_frames, N_POSE))
    pose[:, :3] = head_pose(rng, n_frames, words, style, head_offset)
    pose[:, :3] += rng.normal(0, 0.002, (n_frames, 3))
    pose[:, 3] = jaw + rng.normal(0, 0.002, n_frames)
    return exp.astype(np.float32), pose.astype(np.float32)
