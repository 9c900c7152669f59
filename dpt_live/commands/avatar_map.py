"""`dpt-live fit-avatar-map`: fit a model's FLAME -> avatar-controls mapping on SynthTalk
(training/avatar_map.py) and write it into the model directory as avatar_map.json."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fit-avatar-map", help="fit the mapping from a model's FLAME motion to VRM/ARKit avatar controls",
        description="Stream the model over held-out SynthTalk clips and fit, against the world's ground truth "
                    "(visemes, articulation), the mapping the VMC bridge and the VRM viewer use; writes "
                    "MODEL/avatar_map.json. Refit after retraining a model (docs/CLIENTS.md).")
    p.add_argument("--model", type=Path, required=True, help="model directory (the map is written into it)")
    p.add_argument("--data", type=Path, required=True, help="a SynthTalk world (`dpt-live synth --out DIR`)")
    p.add_argument("--fit-split", default="val", help="split the maps are fitted on (default val)")
    p.add_argument("--test-split", default="test", help="split the held-out figures come from (default test)")
    p.add_argument("--max-clips", type=int, help="at most this many clips per split")
    p.add_argument("-o", "--output", type=Path, help="write here instead of MODEL/avatar_map.json")
    p.add_argument("--cache", type=Path, help="keep the streamed motion here (.npz per split) to refit in seconds")
    p.set_defaults(func=_cmd_fit)


def _cmd_fit(args) -> int:
    import json

    from training.avatar_map import fit_avatar_map, write_avatar_map

    fit = fit_avatar_map(args.model, args.data, args.fit_split, args.test_split, args.max_clips, cache=args.cache)
    if args.output:
        args.output.write_text(json.dumps({"fit": fit}, indent=1) + "\n")
        path = args.output
    else:
        path = write_avatar_map(fit, args.model)
    print(f"wrote {path}")
    return 0
