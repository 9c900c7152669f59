"""What `dpt-live distill --audio DIR [--styles DIR]` distils from when there is no motion data:
speech files and style vectors.

Without motion data nothing but the teacher can say how a face moves, so every target is the
teacher's own offline generation from the audio (training/distill_data.py): the frames the student
continues from and the frames it must produce both come from it. What a motion dataset gave
besides — the speaker's style and face shape — is replaced by:

- style: one of the given style vectors (e.g. a model's styles/ presets, the official demo styles),
  optionally a convex mix of two of them (``style_mix``: more styles between the few given), or
  the null style (draw_target's no-style share);
- shape: the mean FLAME face, which is what a streaming session uses unless told otherwise.

Any speech works: .wav/.flac files in a folder (sub-folders included), any rate and channel count
(resampled to 16 kHz mono), long recordings cut into segments."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from diffposetalk.units import SAMPLE_RATE

log = logging.getLogger("dpt_live.distill")

AUDIO_SUFFIXES = (".wav", ".flac")
MIN_SECONDS = 1.0  # shorter segments give a streaming session too few steps to learn from


@dataclass
class AudioClip:
    entry: str  # the file's path in the folder without suffix, "#k" for the k-th segment of a long file
    person: str  # the file's sub-folder ("." at the top): a speaker when the folder is laid out by speaker
    audio: np.ndarray  # (n,) float32 16 kHz mono


def find_audio_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--audio {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise UserError(f"--audio {folder}: no {'/'.join(AUDIO_SUFFIXES)} files in it")
    return files


def load_audio_clips(folder: Path, segment_seconds: float) -> list[AudioClip]:
    """Every speech file under ``folder`` (sorted by path), cut into segments of at most
    ``segment_seconds``; a tail shorter than MIN_SECONDS is dropped."""
    from diffposetalk.audio_io import load_audio

    if segment_seconds < MIN_SECONDS:
        raise UserError(f"--segment-seconds {segment_seconds}: must be at least {MIN_SECONDS}")
    folder = Path(folder)
    seg = int(segment_seconds * SAMPLE_RATE)
    clips = []
    for path in find_audio_files(folder):
        audio = load_audio(path)
        rel = path.relative_to(folder)
        stem, person = rel.with_suffix("").as_posix(), rel.parent.as_posix()
        pieces = [audio[s:s + seg] for s in range(0, len(audio), seg)]
        pieces = [p for p in pieces if len(p) >= MIN_SECONDS * SAMPLE_RATE]
        if not pieces:
            log.warning("%s: shorter than %.1f s, skipped", path, MIN_SECONDS)
        for k, piece in enumerate(pieces):
            clips.append(AudioClip(stem if len(pieces) == 1 else f"{stem}#{k}", person, piece))
    if len(clips) < 2:
        raise UserError(f"--audio {folder}: {len(clips)} usable segment(s) of >= {MIN_SECONDS} s; at least 2 are "
                        "needed (train and val)")
    return clips


def split_audio_clips(clips: list[AudioClip], val_clips: int,
                      train_clips: int | None) -> tuple[list[AudioClip], list[AudioClip]]:
    """(train, val): the last ``val_clips`` segments validate (at most a fifth, at least one), the
    rest train (the first ``train_clips`` of them when given)."""
    n_val = max(1, min(val_clips, len(clips) // 5))
    train, val = clips[:-n_val], clips[-n_val:]
    return (train[:train_clips] if train_clips else train), val


def load_styles(folder: Path, d_style: int) -> dict[str, np.ndarray]:
    """name -> style vector, from every .npy in ``folder`` (checked: shape, finite)."""
    from diffposetalk.model_dir import load_vector

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--styles {folder}: not a folder")
    styles = {p.stem: load_vector(p, d_style, "style") for p in sorted(folder.glob("*.npy"))}
    if not styles:
        raise UserError(f"--styles {folder}: no .npy style vectors in it")
    return styles


def draw_style(seed: int, set_idx: int, clip_idx: int, names: list[str], mix: float) -> list[tuple[str, float]]:
    """The style of one target as (name, weight) pairs: one given style, or with probability ``mix``
    a convex mix of two (deterministic per seed/set/clip, as the other draws)."""
    rng = np.random.default_rng([seed, set_idx, clip_idx, 13])
    a = int(rng.integers(len(names)))
    if len(names) > 1 and rng.random() < mix:
        b = (a + 1 + int(rng.integers(len(names) - 1))) % len(names)
        w = float(rng.uniform(0.0, 1.0))
        return [(names[a], 1.0 - w), (names[b], w)]
    return [(names[a], 1.0)]


def mixed_style(styles: dict[str, np.ndarray], parts: list[tuple[str, float]]) -> np.ndarray:
    return sum(w * styles[n] for n, w in parts).astype(np.float32)


def describe_style(parts: list[tuple[str, float]]) -> str:
    return parts[0][0] if len(parts) == 1 else "+".join(f"{w:.2f}*{n}" for n, w in parts)
