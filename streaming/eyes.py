"""Procedural eyes: DiffPoseTalk outputs no eyelids or gaze, so a live avatar gets them here.

Per frame (25 fps) an array ``eyes`` of 4 floats:

| index | name | unit |
|---|---|---|
| 0 | blink_l | 0 open .. 1 closed |
| 1 | blink_r | 0 open .. 1 closed |
| 2 | gaze_yaw | radians, + = looking to the avatar's left |
| 3 | gaze_pitch | radians, + = looking up |

Blinks come at random intervals of 2-6 s and last ~150 ms (a fast close, a slower open, as in
real blinks). Gaze holds still and jumps by small micro-saccades (about 0.3-1 degree, every
0.3-1.5 s), pulled back towards straight ahead so it never wanders off. Everything is drawn from
a seeded generator: the same seed gives the same eyes."""

from __future__ import annotations

import numpy as np

from diffposetalk.units import FPS

EYE_CHANNELS = ("blink_l", "blink_r", "gaze_yaw", "gaze_pitch")


class ProceduralEyes:
    def __init__(self, seed: int = 0, fps: int = FPS, blink_interval_s=(2.0, 6.0), blink_s: float = 0.15,
                 saccade_interval_s=(0.3, 1.5), saccade_rad: float = 0.015, gaze_limit_rad: float = 0.05):
        self.rng = np.random.default_rng(seed)
        self.dt = 1.0 / fps
        self.blink_interval, self.blink_s = blink_interval_s, blink_s
        self.saccade_interval, self.saccade_rad, self.gaze_limit = saccade_interval_s, saccade_rad, gaze_limit_rad
        self.t = 0.0
        self.next_blink = self.rng.uniform(*blink_interval_s)
        self.next_saccade = self.rng.uniform(*saccade_interval_s)
        self.gaze = np.zeros(2)

    def _blink(self, s: float) -> float:
        """Lid closure ``s`` seconds after a blink starts: close in 1/3 of it, open in 2/3."""
        close = self.blink_s / 3
        if s < 0 or s >= self.blink_s:
            return 0.0
        return s / close if s < close else (self.blink_s - s) / (self.blink_s - close)

    def next(self) -> np.ndarray:
        t = self.t + self.dt / 2  # sample the middle of the frame
        if t >= self.next_blink + self.blink_s:
            self.next_blink += self.blink_s + self.rng.uniform(*self.blink_interval)
        lid = self._blink(t - self.next_blink)
        if t >= self.next_saccade:
            # a small jump, biased back towards the centre (mean reversion keeps gaze bounded)
            step = self.rng.normal(scale=self.saccade_rad, size=2) - 0.5 * self.gaze
            self.gaze = np.clip(self.gaze + step, -self.gaze_limit, self.gaze_limit)
            self.next_saccade += self.rng.uniform(*self.saccade_interval)
        self.t += self.dt
        return np.array([lid, lid, self.gaze[0], self.gaze[1]], dtype=np.float32)
