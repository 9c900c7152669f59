"""`dpt-live distill`: a 1/2/4-step streaming student from a teacher, with motion data (--data) or
speech alone (--audio) (training/distill.py, imported when the command runs: torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpt_live.commands.arguments import options_from
from training.distill import STEP_CHOICES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil a teacher model into a 1/2/4-step streaming student")
    p.add_argument("--teacher", required=True, type=Path, help="teacher model directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="motion data: HDTF_TFHP-layout lmdb (or a SynthTalk folder)")
    src.add_argument("--audio", type=Path,
                     help="speech alone: a folder of .wav/.flac files (any rate; sub-folders included); the "
                          "teacher generates all motion itself (docs/DISTILL.md)")
    p.add_argument("-o", "--out", required=True, type=Path, help="student model directory (checkpoints)")
    p.add_argument("--steps", type=int, choices=STEP_CHOICES, default=2, help="student denoising steps")
    p.add_argument("--init", type=Path, help="start from this student (e.g. progressive: a 2-step student "
                                              "for a 1-step one) instead of the teacher")
    g = p.add_argument_group("targets (built once, cached, resumable)")
    g.add_argument("--stream-encoder", type=Path,
                   help="model directory whose streaming audio encoder makes the student's audio features, as a "
                        "live session using it computes them (default: the teacher's encoder over each window)")
    g.add_argument("--targets", type=Path, help="targets folder (default: <out>-targets next to --out)")
    g.add_argument("--target-sets", type=int, default=2,
                   help="passes over the train clips, each with its own guidance/noise/window draw")
    g.add_argument("--target-set", type=int, action="append",
                   help="build only this set (repeatable; for parallel builds with --only-targets)")
    g.add_argument("--target-steps", type=int, default=25, help="teacher DDIM steps for the targets")
    g.add_argument("--window", type=int, default=8, help="student window in frames (>= hop + lookahead)")
    g.add_argument("--n-prev", type=int,
                   help="previous frames the student continues from (default: the teacher's, 10); fewer cost "
                        "less per pass (the targets record the teacher's and the student takes the last N)")
    g.add_argument("--configs", default="80/80,80/40,160/80", help="hop/lookahead ms pairs the student sees")
    g.add_argument("--context-ms", type=int, default=1600)
    g.add_argument("--val-clips", type=int, default=10, help="val clips for the validation loss")
    g.add_argument("--train-clips", type=int, help="only the first N train clips (default: all)")
    g.add_argument("--style-swap", type=float, default=0.0,
                   help="share of targets conditioned on another speaker's style, so the student cannot "
                        "read the style off the voice (docs/DISTILL.md)")
    g.add_argument("--styles", type=Path,
                   help="with --audio: folder of .npy style vectors the targets are conditioned on (default: the "
                        "teacher's styles/ presets); some targets use the null style")
    g.add_argument("--style-mix", type=float, default=0.0,
                   help="share of targets conditioned on a random convex mix of two styles: two given ones "
                        "(--audio), the speaker's own and another train speaker's (--data; train targets only)")
    g.add_argument("--segment-seconds", type=float, default=20.0,
                   help="with --audio: longer files are cut into segments of this length")
    g.add_argument("--pad-silence", type=float, default=0.0, metavar="SECONDS",
                   help="digital silence added before and after every clip, so the targets hold long pauses "
                        "(use another --targets folder than unpadded targets)")
    g.add_argument("--reverse", action="store_true",
                   help="build the missing shards last clip first (a second parallel builder)")
    g.add_argument("--only-targets", action="store_true", help="build the targets and stop")
    g.add_argument("--no-build", action="store_true",
                   help="train on the shards already in --targets (e.g. while parallel builders still run)")
    g = p.add_argument_group("training")
    g.add_argument("--iters", type=int, default=3000)
    g.add_argument("--batch", type=int, default=64)
    g.add_argument("--lr", type=float, default=2e-4)
    g.add_argument("--warmup", type=int, default=100)
    g.add_argument("--schedule", choices=["constant", "cosine"], default="cosine")
    g.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    g.add_argument("--vel-weight", type=float, default=5.0, help="velocity term weight")
    g.add_argument("--mouth-weight", type=float, default=1.0, help="weight of the mouth dims in the loss")
    g.add_argument("--context-mix", type=float, default=0.0,
                   help="probability per training window that its previous frames come from another style "
                        "draw of the same clip, amplitude-jittered (decorrelates context and style)")
    g.add_argument("--rollout", type=int, default=0,
                   help="per iteration, this many rollouts: the student runs ~4 s of a clip as a session does, "
                        "from its own previous frames, with coefficient, velocity and style losses (0: off)")
    g.add_argument("--style-weight", type=float, default=1.0,
                   help="weight of the rollouts' style term (1 - cosine of the style encoder's vectors)")
    g.add_argument("--val-every", type=int, default=250)
    g.add_argument("--save-every", type=int, default=250)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--device", default="cpu")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_distill)


def cmd_distill(args) -> int:
    from training.distill import DistillOptions, distill

    result = distill(options_from(args, DistillOptions))
    if args.only_targets:
        print(f"targets in {result.targets}: {len(result.train_shards)} train, {len(result.val_shards)} val shards")
    else:
        cfg = result.config
        print(f"student written to {args.out} ({cfg.student_steps} steps, {cfg.n_motions}-frame window, "
              f"{cfg.n_prev_motions} previous frames)")
    return 0
