"""Generates a SynthTalk world: speakers, clips, the HDTF_TFHP lmdb, speakers.json and the
phoneme timings of every clip (``phonemes/<person>_<video:03d>.json``)."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training import tfhp_format as fmt
from training.synth.clip import Clip, make_clip
from training.synth.speakers import Speaker, make_speakers, split_speakers
from training.tfhp_writer import TfhpWriter

MIN_CLIP_SECONDS = 8.5  # the denoiser samples two consecutive 100-frame windows (8 s)
TARGET_CLIP_SECONDS = 45.0


@dataclass
class WorldSummary:
    out: Path
    speakers: dict[str, list[str]] = field(default_factory=dict)  # split -> persons
    frames: dict[str, int] = field(default_factory=dict)          # split -> frames
    clips: dict[str, int] = field(default_factory=dict)           # split -> clips

    @property
    def minutes(self) -> float:
        return sum(self.frames.values()) / fmt.FPS / 60.0


def clip_plan(n_speakers: int, minutes: float, seed: int,
              clips_per_speaker: int | None = None) -> list[list[float]]:
    """Target seconds of each clip of each speaker, summing to ``minutes``."""
    per_speaker = minutes * 60.0 / n_speakers
    k = clips_per_speaker or max(1, int(round(per_speaker / TARGET_CLIP_SECONDS)))
    # Lengths vary by +-20 %, so the shortest clip is >= 2/3 of the mean: keep it >= the minimum.
    k = max(1, min(k, int(per_speaker // (1.5 * MIN_CLIP_SECONDS))))
    rng = np.random.default_rng([seed, 3])
    plan = []
    for _ in range(n_speakers):
        weights = rng.uniform(0.8, 1.2, k)
        plan.append([float(w) for w in per_speaker * weights / weights.sum()])
    return plan


def _make_clip_task(task: tuple[Speaker, int, float, tuple[int, ...]]) -> tuple[Speaker, int, Clip]:
    speaker, video, seconds, seed = task
    return speaker, video, make_clip(speaker, seconds, seed)


def _r(x: float) -> float:
    return round(float(x), 5)  # 10 us resolution keeps the JSON small


def _timings_json(speaker: Speaker, video: int, clip: Clip) -> dict:
    return {"person": speaker.person, "video": video, "fps": fmt.FPS,
            "n_frames": clip.n_frames, "anticipation": _r(speaker.style.anticipation),
            "phonemes": [[p, _r(s), _r(e)] for p, s, e in clip.phonemes],
            "words": [[w, _r(s)] for w, s in clip.words],
            "utterances": [[_r(s), _r(e), text] for s, e, text in clip.utterances],
            "augmentation": clip.augmentation}


def check_world_request(out: str | Path, n_speakers: int, minutes: float, clips_per_speaker: int | None = None,
                        workers: int = 1) -> list[str]:
    """Refuse a world that cannot be generated (UserError naming the option; a missing espeak-ng
    with its install hint); returns warnings about one that can but will not train well."""
    from diffposetalk.errors import UserError
    from training.espeak import require

    if n_speakers < 3:
        raise UserError("--speakers must be at least 3 (train, val and test speakers are disjoint)")
    if minutes <= 0:
        raise UserError("--minutes must be positive")
    if clips_per_speaker is not None and clips_per_speaker < 1:
        raise UserError("--clips-per-speaker must be at least 1")
    if workers < 1:
        raise UserError("--workers must be at least 1")
    if (Path(out) / "lmdb").exists():
        raise UserError(f"{Path(out) / 'lmdb'} already exists: choose another --out or remove it")
    require()
    if minutes * 60 / n_speakers < MIN_CLIP_SECONDS:
        return [f"under {MIN_CLIP_SECONDS} s per speaker; the denoiser trains on clips "
                "of at least 8 s (two 100-frame windows)"]
    return []


def generate_world(out: str | Path, n_speakers: int, minutes: float, seed: int,
                   clips_per_speaker: int | None = None, workers: int = 1,
                   progress: Callable[[float], None] | None = None) -> WorldSummary:
    """Write the world under ``out`` (``out/lmdb`` must not exist). ``progress`` is called
    with the seconds of audio of each finished clip. Same arguments -> identical lmdb values."""
    out = Path(out)
    speakers = make_speakers(n_speakers, seed)
    split_of = split_speakers([s.person for s in speakers], seed)
    plan = clip_plan(n_speakers, minutes, seed, clips_per_speaker)
    tasks = [(spk, video, seconds, (seed, 4, i, video))
             for i, (spk, clips) in enumerate(zip(speakers, plan)) for video, seconds in enumerate(clips)]
    # The lmdb grows as needed up to map_size (address space only): ~2 MB per audio minute.
    map_size = (1 << 30) + int(minutes * (16 << 20))
    summary = WorldSummary(out=out)
    description = {s.person: {"split": split_of[s.person], **s.describe(), "clips": []} for s in speakers}
    (out / "phonemes").mkdir(parents=True, exist_ok=True)

    with TfhpWriter(out / "lmdb", map_size=map_size) as writer:
        for speaker, video, clip in _run(tasks, workers):
            split = split_of[speaker.person]
            entry = writer.add_clip(speaker.person, video, split, clip.exp, clip.pose, clip.shape, clip.audio)
            timings = _timings_json(speaker, video, clip)
            (out / "phonemes" / f"{speaker.person}_{video:03d}.json").write_text(json.dumps(timings))
            description[speaker.person]["clips"].append({"entry": entry, "n_frames": clip.n_frames})
            summary.frames[split] = summary.frames.get(split, 0) + clip.n_frames
            summary.clips[split] = summary.clips.get(split, 0) + 1
            if progress:
                progress(clip.n_frames / fmt.FPS)

    for person, split in sorted(split_of.items()):
        summary.speakers.setdefault(split, []).append(person)
    (out / "speakers.json").write_text(json.dumps({"seed": seed, "speakers": description}, indent=1))
    return summary


def _run(tasks, workers: int):
    """Clips in task order, made here or by a pool of worker processes."""
    if workers <= 1:
        yield from map(_make_clip_task, tasks)
        return
    # fork: workers inherit the imported modules; espeak is initialised in each worker.
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_make_clip_task, tasks)
