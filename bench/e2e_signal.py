"""The glass-to-glass test recording: short espeak-ng speech bursts separated by silence, so every
burst starts with a sharp onset a measurement can find in the captured audio. Written as 48 kHz
16-bit mono WAV, the format Chromium's fake microphone (--use-file-for-fake-audio-capture) plays."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError

RATE = 48000
# Words that open with a plosive or an open vowel: the mouth has to move at the burst's start. Not
# a nasal: during an initial /m/ the lips are closed while the voice sounds, so the mouth rightly
# opens only at the vowel (50-90 ms later for "mama" and "map", the words first used here; that
# was articulation, not latency).
WORDS = ("papa", "bob", "pad", "pat", "bad", "ba ba", "pop", "dab", "baby", "ah ha", "tap", "pub")


def _espeak(text: str, voice: str, folder: Path) -> np.ndarray:
    """One utterance from espeak-ng, float32 at RATE, leading/trailing silence cut."""
    import soundfile as sf
    import soxr

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError("espeak-ng is not installed (make system installs it)")
    wav = folder / "word.wav"
    subprocess.run([exe, "-v", voice, "-s", "150", "-w", str(wav), text], check=True, capture_output=True)
    audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    audio = soxr.resample(audio.mean(1), rate, RATE)
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    return audio[loud[0]:loud[-1] + 1] if len(loud) else audio


def make_onset_recording(path: Path, onsets: int = 24, gap_s: float = 0.9, burst_s: float = 0.45,
                         lead_s: float = 1.0, voice: str = "en-us") -> dict:
    """Write ``onsets`` bursts (each at most ``burst_s``, faded out) with ``gap_s`` of silence
    between them after ``lead_s`` of silence. Returns where the onsets are (s) and the length."""
    import soundfile as sf

    if onsets < 1 or gap_s < 0.3 or burst_s <= 0.05:
        raise UserError("e2e recording: needs >= 1 onset, gaps >= 0.3 s and bursts > 50 ms")
    parts, starts, pos = [np.zeros(round(lead_s * RATE), np.float32)], [], lead_s
    fade = np.linspace(1, 0, round(0.03 * RATE), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        cache: dict[str, np.ndarray] = {}
        for i in range(onsets):
            word = WORDS[i % len(WORDS)]
            if word not in cache:
                cache[word] = _espeak(word, voice, Path(tmp))
            burst = cache[word][:round(burst_s * RATE)].copy()
            burst[-len(fade):] *= fade[-len(burst):] if len(burst) < len(fade) else fade
            burst *= 0.7 / max(1e-6, float(np.abs(burst).max()))
            starts.append(round(pos, 4))
            parts += [burst, np.zeros(round(gap_s * RATE), np.float32)]
            pos += (len(burst) + round(gap_s * RATE)) / RATE
    audio = np.concatenate(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, RATE, subtype="PCM_16")
    return {"path": str(path), "rate": RATE, "seconds": round(len(audio) / RATE, 3), "onsets_s": starts}
