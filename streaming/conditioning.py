"""Input conditioning for live audio: repair what a live source can deliver, and normalise
without a whole clip.

The reference normalises each whole clip, (a - mean) / (std + 1e-5). A stream has no whole clip,
so :class:`RunningNormalizer` keeps exponential running estimates of the mean and variance
(time constant ``tau_s``) and divides by max(std, ``floor``):

- the running mean removes a DC offset (it plays the role of a high-pass filter);
- the bias-corrected start (as Adam's moments) makes the first hop already use real statistics;
- the floor stops silence or a muted microphone being amplified into loud noise;
- statistics are updated once per step with exactly the samples that step consumed, so the
  result does not depend on how a source cut its audio into blocks.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from diffposetalk.units import SAMPLE_RATE

log = logging.getLogger("dpt_live.stream")

FULL_SCALE = 0.999  # |x| at or above this counts as clipped


class AudioConditioner:
    """Replaces NaN/inf with 0 and notices clipping; each is reported once per stream (a live
    source that glitches once usually glitches often) and counted for the report."""

    def __init__(self, clip_fraction: float = 0.01):
        self.clip_fraction = clip_fraction
        self.nonfinite = 0
        self.clipped_blocks = 0

    def __call__(self, block: np.ndarray) -> np.ndarray:
        block = np.asarray(block, dtype=np.float32)
        if block.size and float(np.abs(block).max()) < FULL_SCALE:  # the usual block: finite, unclipped (one pass)
            return block
        bad = ~np.isfinite(block)
        n_bad = int(bad.sum())
        if n_bad:
            if not self.nonfinite:
                log.warning("audio input has NaN/inf samples: replacing them with 0 (reported once)")
            self.nonfinite += n_bad
            block = np.where(bad, np.float32(0), block)
        if block.size and np.mean(np.abs(block) >= FULL_SCALE) >= self.clip_fraction:
            if not self.clipped_blocks:
                log.warning("audio input is clipping (>= %.0f%% of a block at full scale); "
                            "lower the input gain (reported once)", 100 * self.clip_fraction)
            self.clipped_blocks += 1
        return block


class RunningNormalizer:
    def __init__(self, tau_s: float = 8.0, floor: float = 3e-3, rate: int = SAMPLE_RATE):
        self.tau_samples = tau_s * rate
        self.floor = floor
        # exponentially weighted sums of 1, x, x^2 (float64: a DC offset must not eat precision)
        self._w = self._m = self._q = 0.0

    def update(self, samples: np.ndarray) -> None:
        n = len(samples)
        if n == 0:
            return
        x = samples.astype(np.float64)
        a = math.exp(-n / self.tau_samples)
        self._w = a * self._w + (1 - a)
        # sum and dot product: two passes over the step's samples, no temporaries (every step pays this)
        self._m = a * self._m + (1 - a) * float(x.sum()) / n
        self._q = a * self._q + (1 - a) * float(x @ x) / n

    @property
    def mean(self) -> float:
        return self._m / self._w if self._w else 0.0

    @property
    def std(self) -> float:
        if not self._w:
            return self.floor
        var = self._q / self._w - self.mean ** 2
        return max(math.sqrt(max(var, 0.0)), self.floor)

    def normalise(self, window: np.ndarray, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Normalise window[lo:hi] (real audio); everything outside is padding and becomes 0, the
        normalised value of silence at the running mean."""
        hi = len(window) if hi is None else hi
        out = np.zeros_like(window, dtype=np.float32)
        out[lo:hi] = (window[lo:hi] - self.mean) / self.std
        return out
