"""`dpt-live synth`: generate a SynthTalk world in the HDTF_TFHP lmdb layout."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="generate a synthetic speech-to-FLAME training set (SynthTalk)",
        description="Generate a SynthTalk world: espeak-ng speech with ground-truth FLAME motion, "
                    "written as an HDTF_TFHP lmdb (OUT/lmdb) plus speakers.json and phoneme timings.")
    p.add_argument("--out", required=True, help="output folder (OUT/lmdb must not exist yet)")
    p.add_argument("--speakers", type=int, required=True, help="number of speakers (>= 3)")
    p.add_argument("--minutes", type=float, required=True, help="total minutes of audio")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same data)")
    p.add_argument("--clips-per-speaker", type=int, default=None,
                   help="clips per speaker (default: about one per 45 s of a speaker's audio)")
    p.add_argument("--workers", type=int, default=1,
                   help=f"worker processes (this machine has {os.cpu_count()} CPUs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from diffposetalk.errors import UserError
    from training.espeak import require
    from training.synth import generate_world

    out = Path(args.out)
    if args.speakers < 3:
        raise UserError("--speakers must be at least 3 (train, val and test speakers are disjoint)")
    if args.minutes <= 0:
        raise UserError("--minutes must be positive")
    if args.clips_per_speaker is not None and args.clips_per_speaker < 1:
        raise UserError("--clips-per-speaker must be at least 1")
    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    if (out / "lmdb").exists():
        raise UserError(f"{out / 'lmdb'} already exists: choose another --out or remove it")
    require()  # a missing espeak-ng raises a UserError with the install hint
    from training.synth.world import MIN_CLIP_SECONDS

    if args.minutes * 60 / args.speakers < MIN_CLIP_SECONDS:
        print(f"warning: under {MIN_CLIP_SECONDS} s per speaker; the denoiser trains on clips "
              "of at least 8 s (two 100-frame windows)")

    with tqdm(total=round(args.minutes * 60), unit="s audio", desc="synth") as bar:
        summary = generate_world(out, args.speakers, args.minutes, args.seed,
                                 clips_per_speaker=args.clips_per_speaker, workers=args.workers,
                                 progress=lambda seconds: bar.update(round(seconds)))
    print(f"wrote {summary.minutes:.1f} min ({sum(summary.frames.values())} frames at 25 fps) to {out}/lmdb")
    for split in ("train", "val", "test"):
        persons = summary.speakers.get(split, [])
        print(f"  {split:5s}: {len(persons)} speakers, {summary.clips.get(split, 0)} clips, "
              f"{summary.frames.get(split, 0)} frames")
    print(f"  speakers.json and phoneme timings (phonemes/) in {out}")
    return 0
