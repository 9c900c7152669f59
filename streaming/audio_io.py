"""Reading audio files into the 16 kHz mono float32 the model expects.

soundfile (libsndfile) reads WAV/FLAC/OGG/MP3; soxr resamples with high quality (librosa, which
the reference uses, also resamples with soxr by default)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpt_live.errors import UserError

SAMPLE_RATE = 16000


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float32 by averaging channels."""
    audio = np.asarray(audio, dtype=np.float32)
    return audio.mean(axis=1) if audio.ndim == 2 else audio


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    if rate == target:
        return np.asarray(audio, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(audio, dtype=np.float32), rate, target, quality="HQ").astype(np.float32)


def load_audio(path: str | Path, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any common audio file -> (n,) float32 mono at ``target_rate``. Clear errors for unreadable,
    empty or non-finite audio."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file not found: {path}")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as exc:  # libsndfile's messages are specific enough to pass on
        raise UserError(f"cannot read audio file {path}: {exc}") from exc
    audio = to_mono(audio)
    if audio.size == 0:
        raise UserError(f"audio file {path} is empty (0 samples)")
    if not np.all(np.isfinite(audio)):
        raise UserError(f"audio file {path} contains NaN or infinite samples")
    return resample(audio, rate, target_rate)
