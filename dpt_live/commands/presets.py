"""`dpt-live presets`: named style presets (styles/NAME.npy) of a model from dataset speakers
(training/presets.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="write named style presets (styles/NAME.npy) from dataset speakers")
    p.add_argument("--model", required=True, type=Path, help="model directory (presets go to its styles/)")
    p.add_argument("--data", required=True, type=Path, help="HDTF_TFHP-layout lmdb (or a SynthTalk folder)")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("pairs", nargs="+", metavar="NAME=SPEAKER", help="e.g. calm=S021 big_mouth=S052")
    p.set_defaults(func=cmd_presets)


def cmd_presets(args) -> int:
    from diffposetalk.model_dir import load_model_dir
    from training.presets import parse_pairs, speaker_presets, write_presets
    from training.train_data import load_split

    wanted = parse_pairs(args.pairs)
    loaded = load_model_dir(args.model)
    presets = speaker_presets(loaded, load_split(args.data, args.split), wanted)
    for name, path in zip(presets, write_presets(args.model, presets)):
        print(f"wrote {path} (speaker {wanted[name]})")
    return 0
