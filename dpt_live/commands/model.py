"""CLI commands of the model core: init, convert, style, animate, info."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from diffposetalk.errors import UserError
from diffposetalk.paths import DEFAULT_MODEL
from streaming.options import add_model_args
from streaming.setup import load_for_generation

log = logging.getLogger("dpt_live")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="write a model directory with random weights (timing, tests)")
    p.add_argument("--arch", choices=["full", "tiny"], default="full",
                   help="full: the reference's size (HuBERT-base, 8x512 denoiser); tiny: for tests")
    p.add_argument("--no-head-pose", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", required=True, type=Path)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("convert", help="import reference DiffPoseTalk checkpoints (allow-list loader)")
    p.add_argument("--denoiser", required=True, type=Path, help="e.g. iter_0110000.pt")
    p.add_argument("--style-encoder", type=Path, help="e.g. iter_0026000.pt")
    p.add_argument("--stats", required=True, type=Path, help="stats_train.npz of HDTF_TFHP")
    p.add_argument("--style-preset", action="append", default=[], metavar="NAME=FILE.npy",
                   help="bundle a style vector as a named preset (repeatable)")
    p.add_argument("-o", "--out", required=True, type=Path)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("style", help="style vector from 100 frames of motion (npz with exp, pose)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model directory (default: the bundled demo teacher, models/demo)")
    p.add_argument("--motion", required=True, type=Path)
    p.add_argument("--start", type=int, default=0, help="first frame")
    p.add_argument("-o", "--out", required=True, type=Path)
    p.set_defaults(func=cmd_style)

    p = sub.add_parser("animate", help="offline generation over a whole audio file (reference sampler)")
    add_model_args(p)
    p.add_argument("--audio", required=True, type=Path)
    p.add_argument("--shape", type=Path, help="FLAME shape (100,) .npy (default: mean face)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"],
                   help="default: ddpm (the reference) for a teacher, ddim for a distilled student")
    p.add_argument("--steps", type=int, help="ddim steps (ddpm always runs all of the model's steps)")
    p.add_argument("--noise", type=Path, help="npz with x_T and z for exact reproduction")
    p.add_argument("--repeats", type=int, default=1, help="independent samples (batched)")
    p.add_argument("--speech-gate", action="store_true",
                   help="non-speech audio (room tone, noise) becomes silence first, as streaming does by default "
                        "(off by default here: offline generation stays the reference's)")
    p.add_argument("-o", "--out", required=True, type=Path)
    p.set_defaults(func=cmd_animate)

    p = sub.add_parser("info", help="describe a model directory")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model directory (default: the bundled demo teacher, models/demo)")
    p.set_defaults(func=cmd_info)






def cmd_init(args) -> int:
    import numpy as np
    import torch

    from diffposetalk.config import ModelConfig, tiny_config
    from diffposetalk.model import DiffPoseTalk
    from diffposetalk.model_dir import save_model_dir

    torch.manual_seed(args.seed)
    cfg = tiny_config(head_pose=not args.no_head_pose) if args.arch == "tiny" else \
        ModelConfig(head_pose=not args.no_head_pose)
    cfg.description = f"random weights ({args.arch}), for timing and tests"
    model = DiffPoseTalk(cfg)
    stats = {"shape_mean": np.zeros(100), "shape_std": np.ones(100), "exp_mean": np.zeros(50),
             "exp_std": np.ones(50), "pose_mean": np.zeros(6), "pose_std": np.full(6, 0.1)}
    save_model_dir(args.out, cfg, model, stats)
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    return 0


def cmd_convert(args) -> int:
    import numpy as np

    from diffposetalk.convert import convert
    from diffposetalk.model_dir import describe, load_model_dir

    styles = {}
    for item in args.style_preset:
        name, _, path = item.partition("=")
        if not name or not path:
            raise UserError(f"--style-preset wants NAME=FILE.npy, got {item!r}")
        styles[name] = np.load(path, allow_pickle=False)
    for path in [args.denoiser, args.stats] + ([args.style_encoder] if args.style_encoder else []):
        if not path.is_file():
            raise UserError(f"file not found: {path}")
    out = convert(args.denoiser, args.style_encoder, args.stats, args.out, styles)
    print(json.dumps(describe(load_model_dir(out)), indent=2))
    return 0


def cmd_style(args) -> int:
    import numpy as np

    from diffposetalk.model_dir import load_model_dir
    from diffposetalk.style_vectors import style_from_coef_file

    loaded = load_model_dir(args.model)
    vec = style_from_coef_file(loaded, args.motion, args.start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, vec)
    print(f"wrote {args.out} ({vec.shape[0]}-d style from frames {args.start}..{args.start + 99})")
    return 0


def cmd_animate(args) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from diffposetalk.audio_io import load_audio
    from diffposetalk.generate import generate_motion, motion_to_arrays, plan_windows
    from diffposetalk.model_dir import load_vector
    from diffposetalk.sampler import FileNoise, RandomNoise, make_sampler

    loaded, style, guidance = load_for_generation(args)
    cfg, model = loaded.config, loaded.model
    if args.repeats < 1:
        raise UserError("--repeats must be >= 1")
    audio = load_audio(args.audio)
    if args.speech_gate:
        from streaming.speech_gate import gate_clip

        audio = gate_clip(audio)
    # a distilled student runs only under DDIM (its own step count): pick it rather than refuse
    sampler = make_sampler(args.sampler or ("ddim" if cfg.kind == "student" else "ddpm"), args.steps, model)
    shape_raw = torch.from_numpy(load_vector(args.shape, 100, "shape")) if args.shape else torch.zeros(100)
    shape = (shape_raw.to(args.device) - loaded.stats["shape_mean"]) / loaded.stats["shape_std"]
    if args.noise:
        noise = FileNoise.load(args.noise, cfg.n_diff_steps, args.device)
    else:
        noise = RandomNoise(args.seed, args.device)
    plan = plan_windows(len(audio), cfg.n_motions, cfg.fps)
    seconds = len(audio) / 16000
    bar = tqdm(total=plan.n_windows, desc=f"animate ({sampler.name}, {len(sampler.timesteps(model))} steps)",
               unit="window")
    t0 = time.perf_counter()
    try:
        motion = generate_motion(model, audio, shape, style.tensor, sampler, guidance, noise, args.repeats,
                                 progress=lambda i, n: bar.update(1))
    except ValueError as exc:  # noise file shape problems and similar
        raise UserError(str(exc)) from exc
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    arrays = motion_to_arrays(motion, loaded.stats, cfg.head_pose, shape_raw)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.repeats == 1:
        np.savez(args.out, **{k: v[0] for k, v in arrays.items()})
    else:
        np.savez(args.out, **arrays)
    print(f"wrote {args.out}: {arrays['exp'].shape[-2]} frames ({seconds:.2f} s audio) in {elapsed:.1f} s "
          f"= {elapsed / seconds:.2f} s per second of audio")
    return 0


def cmd_info(args) -> int:
    from diffposetalk.model_dir import describe, load_model_dir

    print(json.dumps(describe(load_model_dir(args.model)), indent=2))
    return 0
