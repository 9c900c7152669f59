"""`dpt-live fit-avatar-map`: fit a model's FLAME -> avatar-controls mapping and write it into the
model directory as avatar_map.json — on SynthTalk ground truth (training/avatar_map.py), or with
`--flame` from lip shapes measured on the FLAME mesh (training/flame_lips.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fit-avatar-map", help="fit the mapping from a model's FLAME motion to VRM/ARKit avatar controls",
        description="Stream the model over held-out SynthTalk clips and fit, against the world's ground truth "
                    "(visemes, articulation), the mapping the VMC bridge and the VRM viewer use; writes "
                    "MODEL/avatar_map.json. Refit after retraining a model (docs/CLIENTS.md). With --flame "
                    "(converted official models): measure lip aperture, width and protrusion on the FLAME mesh "
                    "instead, on the model's motion over --audio/--data, or over sampled coefficients.")
    p.add_argument("--model", type=Path, required=True, help="model directory (the map is written into it)")
    p.add_argument("--data", type=Path, help="a SynthTalk world (`dpt-live synth --out DIR`); required without "
                                             "--flame")
    p.add_argument("--flame", type=Path, help="FLAME model file (generic_model.pkl, flame2023 .pkl or .npz): fit "
                                              "from lip shapes measured on its mesh")
    p.add_argument("--audio", type=Path, help="with --flame: a folder of speech files to stream the model over")
    p.add_argument("--fit-split", default="val", help="split the maps are fitted on (default val)")
    p.add_argument("--test-split", default="test", help="split the held-out figures come from (default test)")
    p.add_argument("--max-clips", type=int, help="at most this many clips per split (or audio files)")
    p.add_argument("-o", "--output", type=Path, help="write here instead of MODEL/avatar_map.json")
    p.add_argument("--device", default="cpu", help="with --flame --audio/--data: stream the model on this device "
                                                   "(cuda for a full-size converted model)")
    p.add_argument("--cache", type=Path, help="keep the streamed motion here (.npz per split) to refit in seconds")
    p.set_defaults(func=_cmd_fit)


def _cmd_fit(args) -> int:
    import json

    from diffposetalk.errors import UserError
    from training.avatar_map import fit_avatar_map, write_avatar_map

    if args.flame is not None:
        from diffposetalk.safe_pickle import CheckpointError
        from training.flame_lips import fit_flame_map

        if args.audio is not None and args.data is not None:
            raise UserError("--audio and --data: give one source of speech")
        try:
            fit = fit_flame_map(args.model, args.flame, args.audio, args.data, args.fit_split, args.max_clips,
                                device=args.device)
        except CheckpointError as exc:
            raise UserError(f"--flame: {exc}") from exc
    else:
        if args.data is None:
            raise UserError("fit-avatar-map needs --data (a SynthTalk world) or --flame (a FLAME file)")
        if args.audio is not None:
            raise UserError("--audio needs --flame (without it the fit uses SynthTalk's ground truth, --data)")
        fit = fit_avatar_map(args.model, args.data, args.fit_split, args.test_split, args.max_clips,
                             cache=args.cache)
    if args.output:
        args.output.write_text(json.dumps({"fit": fit}, indent=1) + "\n")
        path = args.output
    else:
        path = write_avatar_map(fit, args.model)
    print(f"wrote {path}")
    return 0
