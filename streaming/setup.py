"""What a command builds from its options before it opens a session: the loaded model, style,
guidance and sampler (`animate`, `stream`, `serve` and `voice-check` build them the same way)."""

from __future__ import annotations

import logging

from streaming.options import DEFAULT_DDIM_STEPS, stream_config_from_args

log = logging.getLogger("dpt_live.stream")


def load_for_generation(args):
    """(loaded model, ChosenStyle, Guidance) from the model options (streaming.options)."""
    import torch

    from diffposetalk.model import Guidance
    from diffposetalk.model_dir import load_model_dir
    from streaming.style import choose_style

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model_dir(args.model, args.device)
    style = choose_style(loaded, args.style)
    if loaded.config.use_style and style.vector is None:
        log.info("no --style given: using the model's null style (no style guidance)")
    guidance = Guidance(scales={"audio": args.cfg_audio, "style": args.cfg_style}, mode=args.cfg_mode,
                        dynamic_threshold=(args.dtr, 1.0, 4.0) if args.dtr > 0 else None)
    return loaded, style, guidance


def pick_sampler(name: str, steps: int | None, loaded):
    from diffposetalk.sampler import make_sampler

    if name == "ddim" and steps is None:
        cfg = loaded.config
        steps = cfg.student_steps if cfg.kind == "student" and cfg.student_steps else DEFAULT_DDIM_STEPS
    return make_sampler(name, steps, loaded.model)


def stream_setup(args):
    """What `stream` builds from its options before it opens a session: (loaded model, style,
    guidance, sampler, shape_raw, StreamConfig). voice-check --stream builds its sessions from the
    same, so both run the model identically."""
    import torch

    from diffposetalk.model_dir import load_vector

    config = stream_config_from_args(args)
    config.spec()  # window arguments are checked before the model loads
    if args.threads is None:
        # one thread unless asked: a step is many small ops, and OpenMP threads that compete for a
        # busy core made steps 10-80x slower in docs/STREAMING.md's measurements
        args.threads = 1
    loaded, style, guidance = load_for_generation(args)
    sampler = pick_sampler(args.sampler, args.steps, loaded)
    shape_raw = torch.from_numpy(load_vector(args.shape, 100, "shape")) if args.shape else torch.zeros(100)
    return loaded, style.vector, guidance, sampler, shape_raw, config
