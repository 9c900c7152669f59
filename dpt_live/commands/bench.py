"""The benchmark family's commands: `dpt-live bench` (the latency matrix of docs/PERFORMANCE.md)
and `dpt-live stream-bench` (the streaming grid of docs/STREAMING.md, a preset of the same runner;
registered from dpt_live/commands/stream.py, where it has always been listed). Arguments here;
the measuring in bench/ (imported when a command runs: torch is heavy)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffposetalk.errors import UserError
from diffposetalk.paths import DEFAULT_STREAM_MODEL, DEMO_AUDIO


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency benchmark: backends x architectures x steps x windows, "
                                     "against the reference sampler (docs/PERFORMANCE.md)")
    p.add_argument("--audio", default=str(DEMO_AUDIO),
                   help="audio file, or 'synthetic' for speech-like test audio (default: the demo speech)")
    p.add_argument("--seconds", type=float, default=8.0,
                   help="use the first SECONDS of the audio (the length of synthetic audio)")
    p.add_argument("--backends", default="torch,onnxruntime",
                   help="comma-separated backend[:precision]: torch, onnxruntime, onnxruntime:int8, tensorrt, "
                        "tensorrt:fp16, auto (ones this machine lacks are reported as skipped)")
    p.add_argument("--archs", default="demo,full",
                   help="comma-separated: demo, demo-student (the bundled trained models), full (the reference "
                        "size), tiny; "
                        "+student[N][pK] (1-step student, N-frame window, K previous frames; default the bundled "
                        "student's 4 and 4) and +small-encoder (demo-size HuBERT) "
                        "variants, e.g. full+student; all but the bundled ones get random weights; 'none' for only --model")
    p.add_argument("--model", type=Path, action="append", help="add a model directory (repeatable), e.g. a student")
    p.add_argument("--steps", default="1,2", help="comma-separated DDIM steps (a student runs its own count)")
    p.add_argument("--windows", default="80/80,160/80",
                   help="comma-separated hop/lookahead (or hop/lookahead/context) in ms")
    p.add_argument("--context-ms", type=int, default=1600, help="left context for windows that give none")
    p.add_argument("--style", help="preset name or .npy (default: the 'default' or first preset, else random)")
    p.add_argument("--reference-seconds", type=float, default=4.0,
                   help="audio for timing the reference DDPM sampler (0: skip it); 4 s = one full window")
    p.add_argument("--reference-steps", type=int,
                   help="time only the first K reference steps and scale (each is the same network call)")
    p.add_argument("--sessions", default="1", metavar="N[,N...]",
                   help="also run N concurrent streams per configuration, fed in real time through one batching "
                        "scheduler (a list, e.g. 8,16,32,64, gives the curve up to overload)")
    p.add_argument("--per-thread", action="store_true",
                   help="with --sessions: each stream calls the networks itself at batch 1 (the mode before the "
                        "scheduler; latency replayed unless --realtime), to compare")
    p.add_argument("--max-batch", type=int, default=32, help="with --sessions: windows per batched call")
    p.add_argument("--latency-budget-ms", type=float, default=400.0,
                   help="a concurrent stream is 'within budget' when it keeps up and its worst latency is below this")
    p.add_argument("--realtime", action="store_true",
                   help="feed the audio in real time and measure latency (default: replay the step times)")
    p.add_argument("--fidelity", action="store_true",
                   help="also compare every stream with offline generation on the same audio (jaw / expression "
                        "correlation and error, audio-feature cosine; the stream-bench columns)")
    p.add_argument("--no-seam-blend", action="store_true", help="emit each step's frames as sampled")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time by wall clock, or by this thread's CPU time (a dedicated core on a shared machine; "
                        "--threads 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (and ONNX Runtime intra-op threads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path,
                   help="where random-weight architectures are built once (default: $DPT_LIVE_CACHE/bench-models, "
                        "else ~/.cache/dpt-live/bench-models)")
    p.add_argument("--batch-sizes", metavar="LIST",
                   help="instead of the matrix: time the networks at these batch sizes (comma-separated "
                        "stream counts, e.g. 1,8,64,256) and report how many streams one device serves")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N: where --batch-sizes and the torch backend's models run")
    p.add_argument("--json", type=Path, help="write the full result as JSON")
    p.add_argument("--markdown", type=Path, help="write the tables as markdown")
    p.add_argument("--plot", type=Path, help="write a PNG plot")
    p.set_defaults(func=cmd_bench)


def register_stream_bench(sub: argparse._SubParsersAction) -> None:
    from streaming.options import DEFAULT_DDIM_STEPS

    p = sub.add_parser("stream-bench", help="streaming benchmark grid: speed, latency, fidelity, seams "
                                            "(a preset of `bench`)")
    p.add_argument("--model", type=Path, action="append",
                   help="model directory (repeatable: e.g. a tiny and a full-size one; default: the bundled "
                        f"stream model, {DEFAULT_STREAM_MODEL.parent.name}/{DEFAULT_STREAM_MODEL.name})")
    p.add_argument("--audio", type=Path, help="audio file, used whole (default: synthetic speech-like audio)")
    p.add_argument("--seconds", type=float, default=8.0, help="length of the synthetic audio")
    p.add_argument("--grid", default="80/80/1600,80/40/1600,80/0/1600,160/80/1600,80/80/800",
                   help="comma-separated hop/lookahead/context in ms (--long: the first)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim",
                   help="ddim (default), or ddpm: every diffusion step of the model")
    p.add_argument("--steps", type=int,
                   help=f"ddim steps (default: a student model's own, else {DEFAULT_DDIM_STEPS})")
    p.add_argument("--style", help="preset name or .npy (default: the model's 'default' preset or null)")
    p.add_argument("--no-offline", action="store_true", help="skip the fidelity comparison with animate")
    p.add_argument("--no-seam-blend", action="store_true", help="emit each step's frames as sampled")
    p.add_argument("--long", type=float, metavar="SECONDS",
                   help="instead of the grid: one long synthetic stream (drift, memory, slowdown) through the "
                        "first --model and the first --grid window")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time steps by wall clock, or by thread CPU time (a dedicated core on a shared machine; "
                        "--threads 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the rows as JSON (grid mode)")
    p.set_defaults(func=cmd_stream_bench)


def cmd_bench(args) -> int:
    from bench.matrix import bench_plan, run_bench

    if args.batch_sizes:
        return cmd_batch_bench(args)
    if not args.per_thread:
        import sys

        # as `serve`: the scheduler's workers and the streams' threads hand work to each other every
        # few ms; the default 5 ms GIL switch interval would add that to every hand-over
        sys.setswitchinterval(0.0005)
    return run_bench(bench_plan(args), args.json, args.markdown, args.plot)


def cmd_batch_bench(args) -> int:
    from bench.batch_throughput import run_batch_bench
    from bench.common import default_cache_dir
    from bench.matrix import parse_steps, parse_windows

    try:
        batches = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
    except ValueError as exc:
        raise UserError(f"--batch-sizes wants comma-separated integers, got {args.batch_sizes!r}") from exc
    if not batches or batches[0] < 1:
        raise UserError("--batch-sizes: give positive batch sizes, e.g. 1,8,64")
    archs = [] if args.archs == "none" else [a.strip() for a in args.archs.split(",") if a.strip()]
    return run_batch_bench(archs, args.model or [], batches, parse_steps(args.steps),
                           parse_windows(args.windows, args.context_ms), args.device,
                           args.cache_dir or default_cache_dir(), args.seed, markdown_path=args.markdown,
                           json_path=args.json)


def cmd_stream_bench(args) -> int:
    from bench.stream_grid import run_stream_bench

    return run_stream_bench(args)
