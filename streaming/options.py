"""Command-line options shared by every command that generates or streams motion (animate,
stream, serve, bench, voice-check), so they read and default the same everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffposetalk.paths import DEFAULT_MODEL, DEFAULT_STREAM_MODEL
from streaming.windowing import default_regen_ms

# what --help says each bundled default is
BUNDLED_MODEL_NAMES = {DEFAULT_MODEL: "the bundled demo teacher, models/demo",
                       DEFAULT_STREAM_MODEL: "the bundled demo student, models/demo-student"}


def add_model_args(p: argparse.ArgumentParser, default: Path | None = DEFAULT_MODEL,
                   default_help: str | None = None) -> None:
    """Options shared by every command that generates motion. `default` is the model a command
    runs without --model (the teacher offline, the student when streaming); `default_help` says
    so in --help when it is not one of the bundled models (e.g. None resolved later)."""
    says = default_help or BUNDLED_MODEL_NAMES.get(default, str(default))
    p.add_argument("--model", type=Path, default=default, help=f"model directory (default: {says})")
    p.add_argument("--style", help="preset name of the model, or a .npy style vector")
    p.add_argument("--cfg-audio", type=float, default=1.15, help="audio guidance scale")
    p.add_argument("--cfg-style", type=float, default=3.0, help="style guidance scale")
    p.add_argument("--cfg-mode", choices=["incremental", "independent"], help="default: the model's")
    p.add_argument("--dtr", type=float, default=0.0, help="dynamic thresholding ratio (0: off; e.g. 0.99)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")


# Chosen by measurement (docs/STREAMING.md, docs/PERFORMANCE.md "glass-to-glass"): a 40 ms hop
# (one frame per step: no client buffer for a step's second frame), 80 ms of lookahead, 1600 ms of
# left context, and with a 40 ms hop one frame regenerated (the layout the bundled student was
# distilled on: as accurate as 80/80, 35-40 ms sooner on screen).
DEFAULT_HOP_MS, DEFAULT_LOOKAHEAD_MS, DEFAULT_CONTEXT_MS = 40, 80, 1600


def stream_config_from_args(args):
    """The StreamConfig of the window/encoder/gate options of add_window_args (and --eyes, --seed,
    --no-seam-blend where a command has them)."""
    from streaming.session import StreamConfig

    g = getattr
    return StreamConfig(args.hop_ms, args.lookahead_ms, args.context_ms,
                        default_regen_ms(args.hop_ms, g(args, "regen_ms", None)),
                        eyes=g(args, "eyes", False), seed=g(args, "seed", 0),
                        audio_encoder=g(args, "audio_encoder", "auto"),
                        seam_blend=not g(args, "no_seam_blend", False),
                        speech_gate=not g(args, "no_speech_gate", False))
DEFAULT_DDIM_STEPS = 2


def add_window_args(p: argparse.ArgumentParser, steps_help: str | None = None) -> None:
    p.add_argument("--hop-ms", type=int, default=DEFAULT_HOP_MS, help="new audio per step (multiple of 40)")
    p.add_argument("--lookahead-ms", type=int, default=DEFAULT_LOOKAHEAD_MS,
                   help="future audio used for the newest frame (multiple of 40)")
    p.add_argument("--context-ms", type=int, default=DEFAULT_CONTEXT_MS,
                   help="past audio the audio encoder sees (multiple of 40)")
    p.add_argument("--regen-ms", type=int,
                   help="emitted audio each step's denoiser window generates again before the new frames "
                        "(multiple of 40; default 40 at a 40 ms hop, else 0): the window then has the layout a "
                        "student distilled on 80 ms hops knows (docs/STREAMING.md)")
    p.add_argument("--no-speech-gate", action="store_true",
                   help="streaming: feed room tone and noise to the encoder as they are (default: audio the voice "
                        "activity detector calls non-speech reaches it as silence; docs/STREAMING.md)")
    p.add_argument("--audio-encoder", choices=["auto", "stream", "window"], default="auto",
                   help="auto: the model's streaming audio encoder when it has one (docs/STREAMING.md), else "
                        "HuBERT over the window; window: HuBERT over context + hop + lookahead every step")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
    p.add_argument("--steps", type=int, help=steps_help or f"ddim steps (default: a student model's own, else "
                                                            f"{DEFAULT_DDIM_STEPS})")


def add_backend_args(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "tensorrt"], default=default,
                   help="engine backend (auto: tensorrt with a GPU, else onnxruntime, else torch; docs/EXPORT.md)")
    p.add_argument("--precision", choices=["fp32", "int8", "fp16"], default="fp32",
                   help="int8: onnxruntime CPU dynamic quantisation; fp16: tensorrt")
