"""`dpt-live distill-encoder`: train a model's streaming audio encoder on speech alone
(training/distill_encoder.py, imported when the command runs: torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpt_live.commands.arguments import options_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill-encoder",
                       help="train a streaming audio encoder to match a teacher's whole-clip audio features")
    p.add_argument("--teacher", required=True, type=Path,
                   help="model directory whose audio encoder (whole clip, offline) gives the targets")
    p.add_argument("--audio", required=True, type=Path, action="append",
                   help="SynthTalk folder (`dpt-live synth`) or a folder of recordings (`dpt-live voices fetch`); "
                        "repeatable")
    p.add_argument("-o", "--out", required=True, type=Path,
                   help="output model directory: --model with the encoder (checkpoints are written here)")
    p.add_argument("--model", type=Path, help="the model that gets the encoder (default: the teacher)")
    p.add_argument("--encoder", choices=["default", "small", "tiny"], default="default",
                   help="encoder size: default (3 layers of 128), small (2 layers of 96), tiny (tests)")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=160, help="frames (40 ms) per training example")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--hop-ms", type=int, default=80, help="session hop the running normaliser is stepped with")
    p.add_argument("--lookahead-ms", type=int, default=80)
    p.add_argument("--no-noise", dest="noise", action="store_false",
                   help="no room-tone/noise/reverb/level augmentation")
    p.add_argument("--val-clips", type=int, default=8)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--max-clips", type=int, help="only the first N training clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_distill_encoder)


def cmd_distill_encoder(args) -> int:
    from training.distill_encoder import EncoderDistillOptions, distill_encoder

    result = distill_encoder(options_from(args, EncoderDistillOptions))
    cos = "" if result.val_cos is None else f", val cosine {result.val_cos:.4f}"
    print(f"streaming encoder written to {result.out} ({result.steps} steps{cos})")
    return 0
