"""`dpt-live train style-encoder|denoiser`: the options of the trainers; the training is
training/train_style.py and training/train_denoiser.py (imported when a command runs: torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpt_live.commands.arguments import options_from


def _common(p: argparse.ArgumentParser, lr: float, batch: int) -> None:
    p.add_argument("--data", required=True, type=Path, help="HDTF_TFHP-layout lmdb (or a SynthTalk folder)")
    p.add_argument("--out", required=True, type=Path, help="output directory (checkpoints are written here)")
    p.add_argument("--iters", type=int, default=10000)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    p.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                   help="after warm-up: constant, or cosine decay to 10%% at --iters")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a style encoder or a denoiser on an HDTF_TFHP-layout lmdb")
    tsub = p.add_subparsers(dest="train_what", required=True, metavar="WHAT")

    s = tsub.add_parser("style-encoder", help="NT-Xent on same-speaker window pairs")
    _common(s, lr=1e-4, batch=32)
    s.add_argument("--arch", choices=["demo", "full", "tiny"], default="full")
    s.add_argument("--temperature", type=float, default=0.1)
    s.add_argument("--no-head-pose", action="store_true", help="51-d motion (no global rotation)")
    s.set_defaults(func=cmd_style_encoder)

    d = tsub.add_parser("denoiser", help="the diffusion denoiser (+ audio encoder), reference scheme")
    _common(d, lr=1e-4, batch=16)
    d.add_argument("--style-encoder", required=True, type=Path, help="directory from `train style-encoder`")
    d.add_argument("--arch", choices=["demo", "full", "tiny"], default="full")
    d.add_argument("--freeze-audio", choices=["reference", "all", "none"], default=None,
                   help="reference: freeze HuBERT's CNN, feature projection and layers 0-1 (fine-tuning "
                        "a pretrained HuBERT); all: freeze the whole audio path and encode each clip once "
                        "(~3x faster steps; for fine-tuning with --init); none: train all "
                        "(default: none for demo/tiny, reference for full)")
    d.add_argument("--init", type=Path, help="start from this model directory's weights (fine-tuning)")
    d.add_argument("--snr-gamma", type=float, default=0.0, metavar="GAMMA",
                   help="weight each window's losses by 1 + min(SNR(t), GAMMA) (0: the reference's plain "
                        "x0 loss); docs/TRAINING.md")
    d.add_argument("--style-loss", type=float, default=0.0, metavar="W",
                   help="weight of a style-consistency term: 1 - cos between the frozen style encoder's "
                        "vectors of the predicted x0 window and of its GT window (0: off, the reference)")
    d.add_argument("--std-loss", type=float, default=0.0, metavar="W",
                   help="weight of a spread term: squared difference of the per-dimension std over frames "
                        "of the predicted x0 window and of its GT window (0: off, the reference)")
    d.add_argument("--flame", type=Path, help="FLAME model: enables the vertex losses")
    d.add_argument("--dropout", type=float, help="override the denoiser's dropout (reference: 0.1)")
    d.add_argument("--val-batches", type=int, default=4)
    d.set_defaults(func=cmd_denoiser)


def cmd_style_encoder(args) -> int:
    from training.train_style import StyleEncoderOptions, train_style_encoder

    out = train_style_encoder(options_from(args, StyleEncoderOptions, head_pose=not args.no_head_pose))
    print(f"style encoder written to {out}")
    return 0


def cmd_denoiser(args) -> int:
    from training.train_denoiser import DenoiserOptions, train_denoiser

    out = train_denoiser(options_from(args, DenoiserOptions))  # freeze_audio None: the arch's default
    print(f"model written to {out}")
    return 0
