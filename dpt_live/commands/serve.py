"""`dpt-live serve`: the live WebSocket server (server/) from the command line, and
`dpt-live serve-bench`: the server-overhead measurement (bench/server_load.py)."""

from __future__ import annotations

import argparse
import logging
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


def _non_negative(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
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
    p.add_argument("--no-catch-up", action="store_true",
                   help="a session behind its audio (an overloaded server) keeps one frame per step instead of "
                        "taking two a step until it has caught up (docs/STREAMING.md, \"Catching up\")")
    p.add_argument("--no-batch", action="store_true",
                   help="each session calls the networks itself at batch 1 (default: one batching scheduler "
                        "serves every session's calls, docs/STREAMING.md)")
    p.add_argument("--max-batch", type=_positive(int), default=32, help="sessions' windows per batched call")
    p.add_argument("--upstream-rate", type=int, default=16000, choices=[16000, 44100, 48000],
                   help="with --upstream: the sample rate the clients send (48000: a browser page's; the "
                        "server resamples)")
    p.add_argument("--latency-budget-ms", type=_positive(float), default=250.0,
                   help="the frame latency the scheduler plans for; work that would miss it is shed and flagged")
    p.add_argument("--max-viewers", type=_positive(int), default=d.max_viewers, help="open connections, all sessions")
    p.add_argument("--viewer-queue", type=_positive(int), default=d.viewer_queue,
                   help="frames a viewer may fall behind before its oldest frames are dropped")
    p.add_argument("--session-idle", type=_positive(float), default=d.session_idle,
                   help="seconds without viewers and audio before an on-demand session closes")
    p.add_argument("--upstream-idle", type=_positive(float), default=d.upstream_idle,
                   help="seconds without upstream audio before audio_end is assumed")
    p.add_argument("--ping-interval", type=_positive(float), default=d.ping_interval)
    p.add_argument("--ping-timeout", type=_positive(float), default=d.ping_timeout)
    p.add_argument("--lag-bound", type=_non_negative(float), default=d.lag_bound, metavar="S",
                   help="how far behind live a slow viewer may fall: frames in flight are paced by its "
                        "pongs and older queued frames dropped (0: no bound but --viewer-queue)")
    p.add_argument("--stall-timeout", type=_positive(float), default=d.stall_timeout, metavar="S",
                   help="close a viewer that takes no frame for this long while frames wait for it")


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster (docs/SCALING.md)")
    g.add_argument("--cluster", choices=["ray"],
                   help="run the batched step on Ray Serve replicas; this process keeps the sessions and the port")
    g.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="join this Ray cluster (default: start a local Ray and stop it with the server)")
    g.add_argument("--ray-attach", action="store_true",
                   help="use the step application already on the cluster (a KubeRay RayService's, docs/SCALING.md) "
                        "instead of deploying one; --replicas/--autoscale are then the service's")
    n = g.add_mutually_exclusive_group()
    n.add_argument("--replicas", type=_positive(int), default=1, help="replicas of the step (default 1)")
    n.add_argument("--autoscale", metavar="MIN:MAX", help="let Ray Serve scale the replicas between MIN and MAX "
                   "on the requests in flight")
    g.add_argument("--target-in-flight", type=_positive(float), default=4.0,
                   help="with --autoscale: requests in flight per replica Ray Serve aims for (about streams x "
                        "round trip / hop; docs/SCALING.md)")
    g.add_argument("--replica-cpus", type=_positive(float), default=1.0, help="Ray CPUs one replica holds")
    g.add_argument("--replica-gpus", type=_non_negative(float), default=0.0, help="Ray GPUs one replica holds")
    g.add_argument("--step-timeout-ms", type=_positive(float), default=1000.0,
                   help="longest wait for a replica's answer before the step is retried on another")
    g.add_argument("--retries", type=_non_negative(int), default=2,
                   help="further attempts of a step after a timeout or a dead replica; then its frames are "
                        "continued and flagged degraded")


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
    p.add_argument("--avatar", type=Path, metavar="FILE.vrm",
                   help="VRM avatar the browser viewer shows (or drag a .vrm onto the page; docs/CLIENTS.md)")
    p.add_argument("--flame", type=Path, help="FLAME model (generic_model.pkl / flame2023_Open.pkl / .npz): "
                                              "the viewer renders the real mesh (/flame.bin)")
    add_server_args(p)
    add_cluster_args(p)
    p.set_defaults(func=cmd_serve)

    register_serve_bench(sub)
    register_cluster_bench(sub)


def register_serve_bench(sub: argparse._SubParsersAction) -> None:
    from diffposetalk.paths import DEFAULT_STREAM_MODEL, DEMO_AUDIO

    p = sub.add_parser("serve-bench", help="server overhead per frame with 1, 10, ... viewers")
    p.add_argument("--model", type=Path, default=DEFAULT_STREAM_MODEL,
                   help="model directory the server runs (default: the bundled stream model)")
    p.add_argument("--audio", type=Path, default=DEMO_AUDIO,
                   help="played in real time in a loop (default: the demo speech)")
    p.add_argument("--viewers", default="1,10", help="comma-separated viewer counts")
    p.add_argument("--seconds", type=float, default=20.0, help="measurement window per viewer count")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of viewing before each measurement window")
    p.add_argument("--mode", choices=["binary", "json"], default="binary", help="the viewers' frame format")
    p.add_argument("--slow-viewers", type=int, default=0, metavar="N",
                   help="also connect N viewers that read only --slow-fps messages a second; their lag "
                        "behind live and their drops are reported")
    p.add_argument("--slow-fps", type=_positive(float), default=5.0, help="what a slow viewer reads per second")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="the server's engine backend")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `dpt-live serve` (repeatable, e.g. --serve-arg=--steps=1)")
    p.add_argument("--upstream", metavar="N[,M...]",
                   help="instead of viewers: N clients each streaming --audio upstream in real time into a "
                        "session of its own; prints their frames' latency (arrival minus the send time of "
                        "the frame's audio), how many streams kept every frame within --latency-budget-ms "
                        "and the frames shed")
    p.add_argument("--upstream-rate", type=int, default=16000, choices=[16000, 44100, 48000],
                   help="with --upstream: the sample rate the clients send (48000: a browser page's; the "
                        "server resamples)")
    p.add_argument("--latency-budget-ms", type=_positive(float), default=250.0,
                   help="with --upstream: the frame latency a stream must keep")
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    p.set_defaults(func=cmd_serve_bench)










def register_cluster_bench(sub: argparse._SubParsersAction) -> None:
    from diffposetalk.paths import DEFAULT_STREAM_MODEL, DEMO_AUDIO

    p = sub.add_parser("cluster-bench", help="real-time streams on Ray Serve replicas vs in process, and a replica "
                                             "kill drill (docs/SCALING.md)")
    p.add_argument("--model", type=Path, default=DEFAULT_STREAM_MODEL, help="model directory (default: the bundled one)")
    p.add_argument("--audio", type=Path, default=DEMO_AUDIO, help="each stream's audio, looped (default: the demo speech)")
    p.add_argument("--replicas", type=_positive(int), default=2)
    p.add_argument("--replica-cpus", type=_positive(float), default=1.0, help="Ray CPUs one replica holds")
    p.add_argument("--streams", default="1,4", help="comma-separated stream counts")
    p.add_argument("--seconds", type=_positive(float), default=10.0, help="audio per stream")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="onnxruntime")
    p.add_argument("--latency-budget-ms", type=_positive(float), default=250.0)
    p.add_argument("--no-kill", action="store_true", help="skip the replica kill drill")
    p.add_argument("--json", type=Path, help="also write the result as JSON")
    p.set_defaults(func=cmd_cluster_bench)


def cmd_cluster_bench(args) -> int:
    from bench.cluster import run_cluster_bench, write_json
    from bench.matrix import parse_sessions

    result = run_cluster_bench(args.model, args.audio, args.replicas, parse_sessions(args.streams), args.seconds,
                               args.backend, args.latency_budget_ms, not args.no_kill, args.replica_cpus)
    print(f"load average before {result['load_before']}, after {result['load_after']} ({result['cpus']} CPUs)")
    if args.json:
        write_json(result, args.json)
    return 0


def cmd_serve(args) -> int:
    import asyncio
    import signal

    from server.setup import avatar_assets, flame_asset, load_engine, own_source, server_config

    factory, kind = own_source(args)  # before the model: a bad --audio fails fast
    # the scheduler's workers and the sessions' threads hand work to each other every few ms:
    # a shorter GIL switch interval than the default 5 ms keeps that hand-over from adding latency.
    # Not with --cluster: the work is in the replicas, and the switches would starve Ray's own
    # threads in this process (steps measured to stall for seconds)
    if args.cluster is None:
        sys.setswitchinterval(0.0005)
    from server.app import LiveServer, run_server

    engine = load_engine(args)
    config = server_config(args, flame_asset(args, engine.shape_raw))
    config.avatar_map, config.avatar_vrm = avatar_assets(args, engine.loaded.path)
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
    finally:
        engine.close()
    print("dpt-live serve: stopped", flush=True)
    return 0


def cmd_serve_bench(args) -> int:
    from bench.server_load import run_serve_bench

    return run_serve_bench(args)
