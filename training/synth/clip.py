"""One SynthTalk clip ("video"): utterances separated by silences, with motion and timings."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from diffposetalk.units import FRAME_SAMPLES, SAMPLE_RATE
from training.espeak import Voice, synthesize
from training.synth.augment import active_rms, augment
from training.synth.motion import make_motion
from training.synth.speakers import Speaker
from training.synth.words import make_utterance

SPEECH_LEVEL = 0.05  # active RMS of the clean speech before the augmentation gain (-26 dBFS)
GAP_RANGE = (0.3, 1.5)  # s of silence before, between and after utterances


@dataclass
class Clip:
    audio: np.ndarray          # (n_frames*640,) float32, augmented
    exp: np.ndarray            # (n_frames, 50) float32
    pose: np.ndarray           # (n_frames, 6) float32
    shape: np.ndarray          # (n_frames, 100) float32
    phonemes: list[tuple[str, float, float]] = field(default_factory=list)  # (name, start, end) s
    words: list[tuple[str, float]] = field(default_factory=list)
    utterances: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, text)
    augmentation: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.exp)


def _utterance_voice(voice: Voice, rng: np.random.Generator) -> Voice:
    """Small per-utterance variation of rate and pitch, as a person varies between sentences."""
    return replace(voice, rate=int(round(voice.rate * rng.uniform(0.93, 1.07))),
                   pitch=int(np.clip(voice.pitch + rng.integers(-4, 5), 0, 100)))


def make_clip(speaker: Speaker, duration: float, seed) -> Clip:
    """``duration`` seconds (rounded down to whole frames) of ``speaker`` talking; the same
    speaker, duration and seed give the same clip."""
    rng = np.random.default_rng(seed)
    pieces, phonemes, words, utterances = [], [], [], []
    t = float(rng.uniform(*GAP_RANGE))
    pieces.append(np.zeros(int(round(t * SAMPLE_RATE)), np.float32))
    while True:
        text = make_utterance(rng)
        utt = synthesize(text, _utterance_voice(speaker.voice, rng), seed=int(rng.integers(2**31)))
        start = sum(len(p) for p in pieces) / SAMPLE_RATE  # exact sample position of this utterance
        ends = [s for _, s in utt.phonemes[1:]] + [utt.duration]
        phonemes += [(name, start + s, start + e) for (name, s), e in zip(utt.phonemes, ends)]
        words += [(w, start + s) for w, s in utt.words]
        utterances.append((start, start + utt.duration, text))
        pieces.append(utt.audio)
        gap = float(rng.uniform(*GAP_RANGE))
        pieces.append(np.zeros(int(round(gap * SAMPLE_RATE)), np.float32))
        if start + utt.duration + gap >= duration:
            break

    # Cut at the requested length, like a video that ends mid-sentence (keeps totals exact).
    clean = np.concatenate(pieces)
    n_frames = min(len(clean), int(round(duration * SAMPLE_RATE))) // FRAME_SAMPLES
    clean = clean[:n_frames * FRAME_SAMPLES]
    end = len(clean) / SAMPLE_RATE
    phonemes = [(p, s, min(e, end)) for p, s, e in phonemes if s < end]
    words = [(w, s) for w, s in words if s < end]
    utterances = [(s, min(e, end), text) for s, e, text in utterances if s < end]
    clean *= SPEECH_LEVEL / max(active_rms(clean), 1e-8)
    audio, aug_params = augment(clean, rng)

    exp, pose = make_motion(rng, phonemes, words, n_frames, speaker.style,
                            speaker.exp_offset, speaker.head_offset)
    shape = np.tile(speaker.shape, (n_frames, 1))
    return Clip(audio, exp, pose, shape, phonemes, words, utterances, aug_params)
