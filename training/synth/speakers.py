"""SynthTalk speakers: a voice, a motion style, a face shape; and speaker-disjoint splits."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from training.espeak import Voice
from training.synth.motion import MotionStyle

LANGUAGES = ("en-us", "en")
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7",
            "+f1", "+f2", "+f3", "+f4", "+f5", "+klatt", "+klatt2", "+klatt3")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Speaker:
    person: str             # "S000"
    voice: Voice
    style: MotionStyle
    shape: np.ndarray       # (100,) FLAME shape, fixed for the speaker
    exp_offset: np.ndarray  # (50,) resting expression
    head_offset: np.ndarray  # (3,) resting head rotation, radians

    def describe(self) -> dict:
        """JSON-ready description (speakers.json)."""
        return {"voice": asdict(self.voice), "style": asdict(self.style),
                "shape": self.shape.round(6).tolist(),
                "exp_offset": self.exp_offset.round(6).tolist(),
                "head_offset": self.head_offset.round(6).tolist()}


def make_speaker(index: int, rng: np.random.Generator) -> Speaker:
    voice = Voice(name=str(rng.choice(LANGUAGES)) + str(rng.choice(VARIANTS)),
                  rate=int(rng.integers(130, 221)), pitch=int(rng.integers(20, 81)),
                  range=int(rng.integers(20, 91)))
    style = MotionStyle(mouth_amp=float(rng.uniform(0.5, 1.6)), smile=float(rng.uniform(-0.4, 1.0)),
                        anticipation=float(rng.uniform(0.04, 0.08)),
                        smoothing=float(rng.uniform(0.02, 0.035)),
                        head_amp=float(rng.uniform(0.3, 1.5)), head_tempo=float(rng.uniform(0.6, 1.6)))
    # Small shapes; higher FLAME components carry less variance, as in real fits.
    shape = rng.normal(0, 0.6, 100) / np.sqrt(1.0 + np.arange(100) / 10.0)
    exp_offset = np.concatenate([rng.normal(0, 0.05, 5), rng.normal(0, 0.1, 45)])
    head_offset = rng.normal(0, [0.03, 0.04, 0.015])
    return Speaker(f"S{index:03d}", voice, style, shape.astype(np.float32),
                   exp_offset.astype(np.float32), head_offset.astype(np.float32))


def make_speakers(n: int, seed: int) -> list[Speaker]:
    """n speakers; speaker i depends only on (seed, i), so growing n keeps earlier speakers."""
    return [make_speaker(i, np.random.default_rng([seed, 1, i])) for i in range(n)]


def split_speakers(persons: list[str], seed: int) -> dict[str, str]:
    """person -> split; about 80/10/10 % of speakers, at least one each in val and test."""
    if len(persons) < 3:
        raise ValueError("need at least 3 speakers for speaker-disjoint train/val/test splits")
    order = np.random.default_rng([seed, 2]).permutation(len(persons))
    n_held = max(1, int(round(0.1 * len(persons))))
    split = {}
    for rank, i in enumerate(order):
        split[persons[i]] = "val" if rank < n_held else "test" if rank < 2 * n_held else "train"
    return split
