"""`dpt-live serve`: the live WebSocket server (server/app.py) from the command line, and
`dpt-live serve-bench`: the server-overhead measurement (registered from bench/server_load.py)."""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from pathlib import Path

from diffposetalk.errors import UserError
from streaming.options import add_model_args

log = logging.getLogger("dpt_live.serve")


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def add_server_args(p: argparse.ArgumentParser) -> None:
    from server.config import ServerConfig

    d = ServerConfig()
    p.add_argument("--host", default=d.host, help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=d.port, help="one port for HTTP and WebSocket (0: any free)")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--token", help="access token for /ws and /flame.bin (default: a random one, printed)")
    tok.add_argument("--no-token", action="store_true", help="no access token (localhost demos only)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="also accept WebSockets from this browser origin, e.g. https://example.org "
                        "(repeatable; '*' = any; the server's own http://host:port origins always are)")
    p.add_argument("--max-message", type=_positive(int), default=d.max_message,
                   help="largest message a client may send, bytes (larger: closed with 1009)")
    p.add_argument("--max-sessions", type=_positive(int), default=d.max_sessions)
    p.add_argument("--max-viewers", type=_positive(int), default=d.max_viewers, help="open connections, all sessions")
    p.add_argument("--viewer-queue", type=_positive(int), default=d.viewer_queue,
                   help="frames a viewer may fall behind before its oldest frames are dropped")
    p.add_argument("--session-idle", type=_positive(float), default=d.session_idle,
                   help="seconds without viewers and audio before an on-demand session closes")
    p.add_argument("--upstream-idle", type=_positive(float), default=d.upstream_idle,
                   help="seconds without upstream audio before audio_end is assumed")
    p.add_argument("--ping-interval", type=_positive(float), default=d.ping_interval)
    p.add_argument("--ping-timeout", type=_positive(float), default=d.ping_timeout)


# streaming.factory.BACKENDS, spelled out: importing the factory pulls in torch, and registration
# must stay light (tests check the two agree)
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


def register(sub: argparse._SubParsersAction) -> None:
    from diffposetalk.paths import DEFAULT_STREAM_MODEL
    from streaming.options import add_window_args

    p = sub.add_parser("serve", help="live server: WebSocket motion stream + web viewer on one port")
    add_model_args(p, default=DEFAULT_STREAM_MODEL)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--audio", type=Path, help="audio file played in real time as the default session's source")
    src.add_argument("--mic", nargs="?", const="", metavar="DEVICE",
                     help="live microphone as the default session's source (default input, index or part of its name)")
    p.add_argument("--loop", action="store_true", help="with --audio: start the file again at its end")
    add_window_args(p)
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="engine backend (auto: tensorrt with a GPU, else onnxruntime, else torch; docs/EXPORT.md)")
    p.add_argument("--precision", help="backend precision (e.g. int8 for onnxruntime, fp16 for tensorrt)")
    p.add_argument("--eyes", action=argparse.BooleanOptionalAction, default=True,
                   help="procedural blinks and gaze (default on; --no-eyes)")
    p.add_argument("--no-seam-blend", action="store_true", help="emit each step's frames as sampled")
    p.add_argument("--shape", type=Path, help="FLAME shape (100,) .npy (default: mean face)")
    p.add_argument("--flame", type=Path, help="FLAME model (generic_model.pkl / flame2023_Open.pkl / .npz): "
                                              "the viewer renders the real mesh (/flame.bin)")
    add_server_args(p)
    p.set_defaults(func=cmd_serve)

    from bench.server_load import register_bench

    register_bench(sub)


def load_engine(args):
    """The shared Engine (model loaded once) from the model/window/guidance arguments."""
    import numpy as np
    import torch

    from diffposetalk.model_dir import load_vector
    from server.engine import Engine
    from streaming.session import StreamConfig
    from streaming.setup import load_for_generation, pick_sampler

    config = StreamConfig(args.hop_ms, args.lookahead_ms, args.context_ms, eyes=args.eyes, seed=args.seed,
                          seam_blend=not args.no_seam_blend)
    config.spec()  # window arguments are checked before the model loads
    if args.threads is None:
        args.threads = 1  # as `stream`: one thread per pipeline (docs/STREAMING.md, wall-clock table)
    loaded, style, guidance = load_for_generation(args)
    if not args.style and style is not None:
        style_name = "default"
    elif args.style and args.style in loaded.styles:
        style_name = args.style
    else:
        style_name = Path(args.style).name if args.style else None
    sampler = pick_sampler(args.sampler, args.steps, loaded)
    shape_raw = load_vector(args.shape, 100, "shape") if args.shape else np.zeros(100, np.float32)
    extra = {}
    if args.precision:
        extra["precision"] = args.precision
    engine = Engine(loaded=loaded, sampler=sampler, config=config, shape_raw=shape_raw, backend=args.backend,
                    guidance_mode=guidance.mode, dynamic_threshold=guidance.dynamic_threshold,
                    default_scales=dict(guidance.scales), default_style_name=style_name,
                    default_style=None if style is None else np.asarray(torch.as_tensor(style), np.float32),
                    build_kwargs=extra)
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
                        ping_interval=args.ping_interval, ping_timeout=args.ping_timeout, flame_asset=flame)


def cmd_serve(args) -> int:
    import asyncio
    import signal

    factory, kind = own_source(args)  # before the model: a bad --audio fails fast
    from server.app import LiveServer, run_server

    engine = load_engine(args)
    config = server_config(args, flame_asset(args, engine.shape_raw))
    server = LiveServer(engine, config, factory, kind)

    def started(srv: LiveServer) -> None:
        m = engine.model_info()
        print(f"dpt-live serve: model {m['path']} ({m['sampler']} {m['denoiser_steps']} steps, backend "
              f"{m['backend']}), source {kind}{' (loop)' if args.loop else ''}", flush=True)
        if config.token is None:
            print("WARNING: --no-token: anyone who can reach this port can watch and control the stream; "
                  "use it only on localhost", file=sys.stderr, flush=True)
        print(f"viewer: {srv.url()}", flush=True)
        print(f"websocket: ws://{srv.url(False)[7:]}ws  health: {srv.url(False)}healthz  metrics: "
              f"{srv.url(False)}metrics  (Ctrl-C stops)", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_server(server, stop, started)

    try:
        asyncio.run(main())
    except OSError as exc:  # e.g. the port is taken
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
    print("dpt-live serve: stopped", flush=True)
    return 0
