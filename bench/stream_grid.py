"""`dpt-live stream-bench`: the figures of docs/STREAMING.md, a preset of the benchmark family.

Grid mode: bench/matrix.py's runner with PyTorch only, no reference sampler, the stream commands'
sampler defaults and every stream compared with offline `animate` generation (same sampler,
seed, style and x_T) on the same audio: per model and hop/lookahead/context, the real-time
factor, per-step compute percentiles, the worst frame latency had the audio arrived in real time
(replayed from the measured step times, streaming/metrics.py), seam smoothness and fidelity.

Long mode (``--long SECONDS``): one long synthetic stream; per stretch of the stream it prints the
step time, resident memory and frame count, to show there is no drift, growth or slowdown."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bench.common import choose_clock, pick_style, rss_mb
from bench.matrix import Plan, run_matrix
from bench.report import grid_row, grid_table
from bench.timed_stream import make_session
from diffposetalk.errors import UserError
from diffposetalk.model import Guidance
from diffposetalk.paths import DEFAULT_STREAM_MODEL
from diffposetalk.synth_audio import speechlike_blocks
from diffposetalk.units import SAMPLE_RATE
from streaming.metrics import percentiles_ms
from streaming.session import StreamConfig
from streaming.windowing import default_regen_ms, frames_in

# what `stream-bench --model` defaults to: the model `stream` and `serve` run
DEFAULT_MODELS = (DEFAULT_STREAM_MODEL,)


def parse_grid(text: str) -> list[tuple[int, int, int]]:
    from streaming.windowing import parse_windows

    return parse_windows(text, "--grid")


def grid_plan(models: list[Path], audio: Path | None, seconds: float, grid: str, sampler: str = "ddim",
              steps: int | None = None, style: str | None = None, offline: bool = True, seam_blend: bool = True,
              threads: int = 1, clock: str = "wall", seed: int = 0) -> Plan:
    """The family's Plan for the streaming grid: the model directories on PyTorch, each window of
    ``grid``; a file is used whole, synthetic audio is ``seconds`` long."""
    return Plan(audio=None if audio is None else str(audio), seconds=seconds if audio is None else None,
                archs=[], models=list(models), backends=[("torch", "fp32")], sampler=sampler,
                steps=None if steps is None else [steps], students_own_steps=False, windows=parse_grid(grid),
                style=style, random_style=False, seam_blend=seam_blend, offline=offline, count_flops=False,
                reference_seconds=0, threads=threads, clock=clock, seed=seed, strict=True)


def run_grid(plan: Plan, json_path: Path | None = None) -> int:
    """Print each row as it is measured, then the settings and the whole table; write the rows."""
    result = run_matrix(plan, progress=lambda line: print(line, flush=True),
                        row_line=lambda row: grid_table([grid_row(row)]).splitlines()[-1])
    rows = [grid_row(r) for r in result["rows"]]
    s = result["settings"]
    source = "synthetic speech-like audio" if plan.audio in (None, "synthetic") else f"audio {plan.audio}"
    print()
    print(f"{s['audio_seconds']:.1f} s of {source}, {plan.sampler} sampler, {torch.get_num_threads()} thread(s), "
          f"{plan.clock} clock; latency replayed for real-time arrival in 20 ms blocks")
    print(grid_table(rows))
    if json_path:
        json_path.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def run_long(model: Path, window: tuple[int, int, int], seconds: float, sampler_name: str = "ddim",
             steps: int | None = None, style_name: str | None = None, seam_blend: bool = True, threads: int = 1,
             clock: str = "wall", seed: int = 0) -> int:
    """One long synthetic stream fed in 100 ms blocks as fast as possible; a line of step time,
    memory and frames every sixth of it (at least every second of audio)."""
    from diffposetalk.model_dir import load_model_dir
    from streaming.setup import pick_sampler

    if seconds <= 0:
        raise UserError("--long: give the stream's length in seconds (> 0)")
    tick = choose_clock(clock, threads)
    torch.set_num_threads(threads)
    hop, la, ctx = window
    loaded = load_model_dir(model)
    sampler = pick_sampler(sampler_name, steps, loaded)
    style, _ = pick_style(loaded, style_name, seed, random_fallback=False)
    config = StreamConfig(hop, la, ctx, default_regen_ms(hop), seed=seed, seam_blend=seam_blend)
    timed = make_session(loaded, sampler, Guidance(), style, config, clock=tick)
    session, rec = timed.session, timed.recorder  # only the step log: frames are counted, not kept
    report_every = max(seconds / 6, 1.0)
    frames, next_report, t0 = 0, report_every, time.perf_counter()
    lines = ["| audio time s | frames | step p50 ms | step p99 ms | RSS MB | wall s |", "|---|---|---|---|---|---|"]
    fed = 0
    for block in speechlike_blocks(seconds, 1600, seed):
        frames += len(session.feed(block))
        fed += len(block)
        if fed / SAMPLE_RATE >= next_report:
            s = percentiles_ms([x.compute_s for x in rec.steps])
            lines.append(f"| {fed / SAMPLE_RATE:.0f} | {frames} | {s['p50']:.1f} | {s['p99']:.1f} | {rss_mb():.0f} "
                         f"| {time.perf_counter() - t0:.0f} |")
            print(lines[-1], flush=True)
            rec.steps.clear()  # percentiles per stretch: a slowdown would show as a trend
            timed.denoise.seconds.clear()  # (kept short, so that memory stays flat)
            next_report += report_every
    frames += len(session.finish())
    print("\n".join(lines))
    print(f"{seconds:.0f} s: {frames} frames (floor(seconds x 25) = {frames_in(fed)}), "
          f"{model.name}, hop/la/ctx {hop}/{la}/{ctx} ms, {sampler_name} "
          f"{len(sampler.timesteps(loaded.model))} step(s), wall {time.perf_counter() - t0:.0f} s")
    return 0


def run_stream_bench(args) -> int:
    """`dpt-live stream-bench` with its options: the grid, or with --long the drift run (first
    model, first grid window). --model defaults to the bundled stream model."""
    models = list(args.model or DEFAULT_MODELS)
    choose_clock(args.clock, args.threads)  # before anything loads
    if args.long is not None:
        return run_long(models[0], parse_grid(args.grid)[0], args.long, args.sampler, args.steps, args.style,
                        not args.no_seam_blend, args.threads, args.clock, args.seed)
    plan = grid_plan(models, args.audio, args.seconds, args.grid, args.sampler, args.steps, args.style,
                     not args.no_offline, not args.no_seam_blend, args.threads, args.clock, args.seed)
    return run_grid(plan, args.json)
