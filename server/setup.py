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
    from streaming.options import stream_config_from_args
    from streaming.setup import load_for_generation, pick_sampler

    config = stream_config_from_args(args)
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
                    catch_up=not getattr(args, "no_catch_up", False),
                    scheduler_options={"max_batch": args.max_batch, "latency_budget_ms": args.latency_budget_ms})
    if getattr(args, "cluster", None) == "ray":
        start_cluster(engine, args)
    engine.probe()  # fail now (backend, shapes), not in a thread; "auto" is resolved once
    return engine


def start_cluster(engine, args) -> None:
    """--cluster ray: the sessions' steps run on Ray Serve replicas (server/cluster.py); the engine
    gets their RemoteScheduler and the cluster (stopped with it)."""
    from server.cluster import ClusterOptions, parse_autoscale, start_remote_scheduler

    if args.no_batch:
        raise UserError("--cluster ray runs the batched step on replicas: it cannot be combined with --no-batch")
    options = ClusterOptions(address=args.ray_address, replicas=args.replicas,
                             autoscale=parse_autoscale(args.autoscale) if args.autoscale else None,
                             replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus, attach=args.ray_attach,
                             target_in_flight=args.target_in_flight)
    spec = engine.config.spec()
    engine.cluster, engine.scheduler = start_remote_scheduler(
        options, engine.loaded, engine.backend, engine.build_kwargs.get("precision", "fp32"), args.threads,
        engine.scheduler_options, warm={"window_samples": spec.window_samples, "sampler": engine.sampler},
        step_timeout_s=args.step_timeout_ms / 1000, retries=args.retries)


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


def avatar_assets(args, model_path) -> tuple[dict | None, bytes | None]:
    """(the model's avatar_map.json, --avatar's VRM bytes); JSON only, a bad file is refused."""
    import json
    from pathlib import Path

    avatar_map = None
    path = Path(model_path) / "avatar_map.json"
    if path.is_file():
        try:
            avatar_map = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable JSON avatar map ({exc})") from exc
        if not isinstance(avatar_map, dict):
            raise UserError(f"{path}: the avatar map must be a JSON object")
    vrm = None
    avatar = getattr(args, "avatar", None)
    if avatar is not None:
        avatar = Path(avatar)
        if not avatar.is_file():
            raise UserError(f"--avatar {avatar}: no such file")
        vrm = avatar.read_bytes()
        if vrm[:4] != b"glTF":
            raise UserError(f"--avatar {avatar}: not a VRM (binary glTF) file")
    return avatar_map, vrm
