"""What `dpt-live serve` builds from its options before the server starts: the shared Engine
(model, sampler, style, guidance), the default session's own audio source, the viewer's FLAME asset
and the ServerConfig. Each fails with a clear UserError before the port is opened."""

from __future__ import annotations

import secrets

from diffposetalk.errors import UserError


def load_engine(args):
    """The shared Engine (model loaded once) from the model/window/guidance arguments."""
    import numpy as np

    from diffposetalk.model_dir import load_vector
    from server.engine import Engine
    from streaming.session import StreamConfig
    from streaming.setup import load_for_generation, pick_sampler

    config = StreamConfig(args.hop_ms, args.lookahead_ms, args.context_ms, eyes=args.eyes, seed=args.seed,
                          audio_encoder=getattr(args, "audio_encoder", "auto"),
                          seam_blend=not args.no_seam_blend)
    config.spec()  # window arguments are checked before the model loads
    if args.threads is None:
        args.threads = 1  # as `stream`: one thread per pipeline (docs/STREAMING.md, wall-clock table)
    loaded, style, guidance = load_for_generation(args)
    sampler = pick_sampler(args.sampler, args.steps, loaded)
    shape_raw = load_vector(args.shape, 100, "shape") if args.shape else np.zeros(100, np.float32)
    extra = {}
    if args.precision:
        extra["precision"] = args.precision
    engine = Engine(loaded=loaded, sampler=sampler, config=config, shape_raw=shape_raw, backend=args.backend,
                    guidance_mode=guidance.mode, dynamic_threshold=guidance.dynamic_threshold,
                    default_scales=dict(guidance.scales), default_style_name=style.name,
                    default_style=style.vector,
                    build_kwargs=extra, batching=not args.no_batch,
                    scheduler_options={"max_batch": args.max_batch, "latency_budget_ms": args.latency_budget_ms})
    engine.probe()  # fail now (backend, shapes), not in a thread; "auto" is resolved once
    return engine


def own_source(args):
    """(factory, kind) of the default session's own source, opened once now so that a missing
    file or microphone is reported before the server starts."""
    from server.sources import LoopingFileSource
    from streaming.sources import MicrophoneSource

    if args.loop and args.audio is None:
        raise UserError("--loop needs --audio FILE")
    if args.audio is not None:
        first = [LoopingFileSource(args.audio, loop=args.loop)]

        def file_factory():
            return first.pop() if first else LoopingFileSource(args.audio, loop=args.loop)
        return file_factory, "file"
    if args.mic is not None:
        device = args.mic or None
        MicrophoneSource(device).close()  # probe now: a clear error instead of a silent session

        def mic_factory():
            return MicrophoneSource(device)
        return mic_factory, "mic"
    return None, "none"


def flame_asset(args, shape_raw) -> bytes | None:
    if args.flame is None:
        return None
    from diffposetalk.flame import load_flame
    from server.flame_asset import build_flame_asset

    if not args.flame.is_file():
        raise UserError(f"FLAME model not found: {args.flame}")
    try:
        return build_flame_asset(load_flame(args.flame), shape_raw)
    except (ValueError, KeyError) as exc:
        raise UserError(f"cannot build the viewer's FLAME asset from {args.flame}: {exc}") from exc


def server_config(args, flame: bytes | None):
    from server.config import ServerConfig

    if args.no_token:
        token = None
    else:
        token = args.token or secrets.token_urlsafe(18)
    return ServerConfig(host=args.host, port=args.port, token=token, allow_origins=list(args.allow_origin),
                        max_message=args.max_message, max_sessions=args.max_sessions,
                        max_viewers=args.max_viewers, viewer_queue=args.viewer_queue,
                        session_idle=args.session_idle, upstream_idle=args.upstream_idle,
                        ping_interval=args.ping_interval, ping_timeout=args.ping_timeout, flame_asset=flame,
                        lag_bound=args.lag_bound or None, stall_timeout=args.stall_timeout)
