"""CLI commands of the streaming engine: `stream` (the whole live pipeline over a file or a
microphone, no server); `stream-bench` (the benchmark grid of docs/STREAMING.md) is listed here
and defined with the benchmark family in dpt_live/commands/bench.py."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from diffposetalk.errors import UserError
from diffposetalk.paths import DEFAULT_STREAM_MODEL
from dpt_live.commands.bench import register_stream_bench
from streaming.options import add_backend_args, add_model_args, add_window_args
from streaming.setup import stream_setup

log = logging.getLogger("dpt_live.stream")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream", help="live pipeline over an audio file or a microphone -> npz (no server)")
    add_model_args(p, default=DEFAULT_STREAM_MODEL)  # --style also takes a motion clip .npz (exp, pose)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", type=Path, help="audio file (any rate/channels; resampled to 16 kHz mono)")
    src.add_argument("--mic", nargs="?", const="", metavar="DEVICE",
                     help="live microphone: default input, or a device index / part of its name; Ctrl-C ends")
    add_window_args(p)
    p.add_argument("--shape", type=Path, help="FLAME shape (100,) .npy (default: mean face)")
    p.add_argument("--realtime", action="store_true", help="play the file in real time (measures latency)")
    p.add_argument("--eyes", action="store_true", help="procedural blinks and gaze (npz key 'eyes')")
    p.add_argument("--no-seam-blend", action="store_true", help="emit each step's frames as sampled")
    p.add_argument("--report", type=Path, help="write timing/latency report (JSON)")
    add_backend_args(p)
    p.add_argument("-o", "--out", required=True, type=Path)
    p.set_defaults(func=cmd_stream)

    # the streaming grid: a preset of the benchmark family, whose arguments live with `bench`'s
    register_stream_bench(sub)


def cmd_stream(args) -> int:
    import numpy as np

    from streaming.factory import build_session
    from streaming.report import StreamRecorder
    from streaming.runner import run_stream
    from streaming.sources import FileSource, MicrophoneSource

    loaded, style, guidance, sampler, shape_raw, config = stream_setup(args)
    if args.audio is not None:
        source = FileSource(args.audio, realtime=args.realtime)
    else:
        source = MicrophoneSource(args.mic or None)
    recorder = StreamRecorder()
    session = build_session(loaded, sampler, guidance, config, style, shape_raw, on_step=recorder.on_step,
                            backend=args.backend, precision=args.precision, threads=args.threads)
    t0 = time.perf_counter()
    result = run_stream(source, session, recorder.on_frames)
    wall = time.perf_counter() - t0
    if not recorder.frames:
        raise UserError(f"no frames: the audio is shorter than one 40 ms frame ({result.samples} samples)")
    arrays = recorder.arrays(shape_raw.numpy())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **arrays)
    seconds = result.samples / 16000
    report = recorder.report(session, seconds, wall, measured_latency=args.realtime or args.audio is None)
    report.update(sampler=sampler.name, denoiser_steps=len(sampler.timesteps(loaded.model)),
                  model=str(args.model), end_reason=result.reason, backend=session.backend)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    lat = report["frame_latency_ms"] or report["replayed_frame_latency_ms"]
    print(f"wrote {args.out}: {len(recorder.frames)} frames ({seconds:.2f} s audio), real-time factor "
          f"{report['real_time_factor']:.2f}, step p95 {report['step_compute_ms']['p95']:.0f} ms, worst frame "
          f"latency {lat['max']:.0f} ms{'' if report['frame_latency_ms'] else ' (replayed)'}")
    return 0
