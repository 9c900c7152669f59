"""`dpt-live synth`: generate a SynthTalk world in the HDTF_TFHP lmdb layout (training/synth)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from training.synth import check_world_request, generate_world

    out = Path(args.out)
    for warning in check_world_request(out, args.speakers, args.minutes, args.clips_per_speaker, args.workers):
        print(f"warning: {warning}")
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
