"""The `dpt-live bench` command: arguments here, the measuring in bench/matrix.py, the writers in
bench/report.py (imported when the command runs: torch is heavy)."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency benchmark: backends x architectures x steps x windows, "
                                     "against the reference sampler (docs/PERFORMANCE.md)")
    p.add_argument("--audio", default=str(ROOT / "clients" / "demo" / "speech.flac"),
                   help="audio file, or 'synthetic' for speech-like test audio (default: the demo speech)")
    p.add_argument("--seconds", type=float, default=8.0, help="use the first SECONDS of the audio")
    p.add_argument("--backends", default="torch,onnxruntime",
                   help="comma-separated backend[:precision]: torch, onnxruntime, onnxruntime:int8, tensorrt, "
                        "tensorrt:fp16, auto (ones this machine lacks are reported as skipped)")
    p.add_argument("--archs", default="demo,full",
                   help="comma-separated: demo, demo-student (the bundled trained models), full (the reference "
                        "size), tiny; "
                        "+student[N] (1-step student, N-frame window) and +small-encoder (demo-size HuBERT) "
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
    p.add_argument("--sessions", type=int, default=1, help="also run N concurrent streams per configuration")
    p.add_argument("--latency-budget-ms", type=float, default=400.0,
                   help="a concurrent stream is 'within budget' when it keeps up and its worst latency is below this")
    p.add_argument("--realtime", action="store_true",
                   help="feed the audio in real time and measure latency (default: replay the step times)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time by wall clock, or by this thread's CPU time (a dedicated core on a shared machine)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=ROOT / "out" / "bench-models",
                   help="where random-weight architectures are built once")
    p.add_argument("--json", type=Path, help="write the full result as JSON")
    p.add_argument("--markdown", type=Path, help="write the tables as markdown")
    p.add_argument("--plot", type=Path, help="write a PNG plot")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from bench.matrix import run_matrix
    from bench.report import markdown, write_json, write_markdown, write_plot

    result = run_matrix(args, progress=lambda line: print(line, flush=True))
    print()
    print(markdown(result))
    if args.json:
        write_json(result, args.json)
    if args.markdown:
        write_markdown(result, args.markdown)
    if args.plot:
        write_plot(result, args.plot)
    return 1 if result["failed"] else 0
