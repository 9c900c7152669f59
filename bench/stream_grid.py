"""`dpt-live stream-bench`: the figures of docs/STREAMING.md.

Grid mode: for each model and each hop/lookahead/context, stream the same audio as fast as
possible and report real-time factor, per-step compute percentiles, the worst frame latency had
the audio arrived in real time (replayed from the measured step times, see
streaming/metrics.py), seam smoothness, and fidelity against offline `animate` generation
(same sampler, seed, style and x_T) on the same audio.

Long mode (``--long SECONDS``): one long synthetic stream; per stretch of the stream it prints the
step time, resident memory and frame count, to show there is no drift, growth or slowdown."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from diffposetalk.generate import generate_motion, motion_to_arrays
from diffposetalk.model import Guidance
from diffposetalk.synth_audio import speechlike, speechlike_blocks
from diffposetalk.units import SAMPLE_RATE
from streaming.factory import torch_session
from streaming.metrics import fidelity, percentiles_ms, replay_latency, seam_smoothness
from streaming.report import StreamRecorder
from streaming.runner import stream_array
from streaming.session import StreamConfig
from streaming.windowing import frames_in, parse_windows


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class FeatureTap:
    """Wraps an audio feature engine and keeps every window's features (short benchmark runs only)."""

    def __init__(self, inner):
        self.inner, self.outputs = inner, []
        self.window_samples, self.n_frames, self.feature_dim = inner.window_samples, inner.n_frames, inner.feature_dim

    def features(self, audio):
        out = self.inner.features(audio)
        self.outputs.append(out)
        return out


def stream_audio(loaded, sampler, guidance, style, config: StreamConfig, audio: np.ndarray, block: int = 320,
                 clock=time.perf_counter):
    rec = StreamRecorder()
    session = torch_session(loaded, sampler, guidance, config, style, on_step=rec.on_step, clock=clock)
    session.audio = tap = FeatureTap(session.audio)
    stream_array(session, audio, block, rec.on_frames)
    ctx = session.spec.context
    feats = np.concatenate([out[ctx:ctx + st.n_frames] for out, st in zip(tap.outputs, rec.steps)])
    return rec, session, feats


@torch.no_grad()
def offline_features(loaded, audio: np.ndarray) -> np.ndarray:
    """Per-frame audio features as offline generation computes them (whole clip normalised, one
    encoder pass over the padded clip)."""
    from diffposetalk.audio_encoder import normalize_clip
    from diffposetalk.generate import plan_windows

    cfg = loaded.config
    x = normalize_clip(torch.as_tensor(audio, dtype=torch.float32))
    plan = plan_windows(len(x), cfg.n_motions, cfg.fps)
    if plan.n_pad_samples > 0:
        x = torch.nn.functional.pad(x, (0, plan.n_pad_samples))
    feats = loaded.model.audio_features(x[None].to(loaded.model.device), cfg.n_motions * plan.n_windows)
    return feats[0, :plan.n_frames].cpu().numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def offline_arrays(loaded, sampler, guidance, style, audio: np.ndarray, seed: int) -> dict:
    from diffposetalk.sampler import RandomNoise

    shape = (torch.zeros(100) - loaded.stats["shape_mean"].cpu()) / loaded.stats["shape_std"].cpu()
    motion = generate_motion(loaded.model, audio, shape, None if style is None else torch.as_tensor(style),
                             sampler, guidance, RandomNoise(seed))
    arrays = motion_to_arrays(motion, loaded.stats, loaded.config.head_pose, torch.zeros(100))
    return {k: v[0] for k, v in arrays.items()}


def grid_row(loaded, name, sampler, guidance, style, audio, hop, la, ctx, seed, offline, clock,
             seam_blend=True) -> dict:
    """offline: None, or (arrays of offline animate, offline per-frame audio features)."""
    config = StreamConfig(hop, la, ctx, seed=seed, seam_blend=seam_blend)
    rec, session, feats = stream_audio(loaded, sampler, guidance, style, config, audio, clock=clock)
    compute = [s.compute_s for s in rec.steps]
    lat = replay_latency(compute, session.spec, len(rec.frames))
    arrays = rec.arrays(np.zeros(100))
    row = {"model": name, "hop_ms": hop, "lookahead_ms": la, "context_ms": ctx,
           "denoiser_steps": len(sampler.timesteps(loaded.model)),
           "rtf": sum(compute) / (len(audio) / SAMPLE_RATE),
           "step_ms": percentiles_ms(compute),
           "features_ms": percentiles_ms([s.features_s for s in rec.steps]),
           "latency_ms": percentiles_ms(lat),
           "seams": seam_smoothness(np.stack([f.motion for f in rec.frames]), session.spec.hop)}
    if offline is not None:
        row["fidelity"] = fidelity(arrays, offline[0])
        row["fidelity"]["feature_cos"] = cosine(feats, offline[1])
    return row


def format_table(rows: list[dict]) -> str:
    head = ("| model | hop/la/ctx ms | RTF | step p50/p95/p99 ms | encoder p50 ms | worst latency ms "
            "| seam/inside | feature cos | jaw corr / rmse | exp corr / rmse |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s, f = r["step_ms"], r.get("fidelity")
        fid = ("—", "—", "—") if f is None else (f"{f['feature_cos']:.3f}", f"{f['jaw_corr']:.3f} / {f['jaw_rmse']:.4f}",
                                                 f"{f['exp_corr']:.3f} / {f['exp_rmse']:.3f}")
        ratio = r["seams"]["ratio"]
        lines.append(f"| {r['model']} | {r['hop_ms']}/{r['lookahead_ms']}/{r['context_ms']} | {r['rtf']:.2f} "
                     f"| {s['p50']:.0f}/{s['p95']:.0f}/{s['p99']:.0f} | {r['features_ms']['p50']:.0f} "
                     f"| {r['latency_ms']['max']:.0f} | {'—' if ratio is None else f'{ratio:.2f}'} "
                     f"| {fid[0]} | {fid[1]} | {fid[2]} |")
    return "\n".join(lines)


def _load(args, path):
    from diffposetalk.model_dir import load_model_dir
    from streaming.setup import pick_sampler
    from streaming.style import choose_style

    loaded = load_model_dir(path)
    sampler = pick_sampler(args.sampler, args.steps, loaded)
    style = choose_style(loaded, args.style if loaded.config.use_style else None).vector  # --style: models that take it
    return loaded, sampler, style


def bench_clock(args):
    """wall: time.perf_counter. cpu: this thread's CPU time — on a shared machine it measures what
    the step costs on a dedicated core (other processes' load does not count); 1 thread only."""
    return time.thread_time if args.clock == "cpu" else time.perf_counter


def run_bench(args) -> int:
    from diffposetalk.errors import UserError

    if args.clock == "cpu" and args.threads != 1:
        raise UserError("--clock cpu measures the calling thread only: use --threads 1")
    torch.set_num_threads(args.threads)
    if args.long:
        return run_long(args)
    from diffposetalk.audio_io import load_audio

    audio = load_audio(args.audio) if args.audio else speechlike(args.seconds, args.seed)
    guidance = Guidance()
    rows = []
    for path in args.model:
        loaded, sampler, style = _load(args, path)
        offline = None if args.no_offline else (offline_arrays(loaded, sampler, guidance, style, audio, args.seed),
                                                offline_features(loaded, audio))
        for hop, la, ctx in parse_windows(args.grid, "--grid"):
            row = grid_row(loaded, path.name, sampler, guidance, style, audio, hop, la, ctx, args.seed, offline,
                           bench_clock(args), not args.no_seam_blend)
            rows.append(row)
            print(format_table([row]).splitlines()[-1], flush=True)
    print()
    print(f"{len(audio) / SAMPLE_RATE:.1f} s of {'audio ' + str(args.audio) if args.audio else 'synthetic speech-like audio'}, "
          f"{args.sampler} sampler, {torch.get_num_threads()} thread(s), {args.clock} clock; latency replayed for "
          "real-time arrival in 20 ms blocks")
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def run_long(args) -> int:
    hop, la, ctx = parse_windows(args.grid, "--grid")[0]
    loaded, sampler, style = _load(args, args.model[0])
    rec = StreamRecorder()  # only its step log; frames are counted, not kept
    session = torch_session(loaded, sampler, Guidance(), StreamConfig(hop, la, ctx, seed=args.seed), style,
                            on_step=rec.on_step, clock=bench_clock(args))
    seconds = args.long
    report_every = max(seconds / 6, 1.0)
    frames, next_report, t0 = 0, report_every, time.perf_counter()
    lines = ["| audio time s | frames | step p50 ms | step p99 ms | RSS MB | wall s |", "|---|---|---|---|---|---|"]
    fed = 0
    for block in speechlike_blocks(seconds, 1600, args.seed):
        frames += len(session.feed(block))
        fed += len(block)
        if fed / SAMPLE_RATE >= next_report:
            s = percentiles_ms([x.compute_s for x in rec.steps])
            lines.append(f"| {fed / SAMPLE_RATE:.0f} | {frames} | {s['p50']:.1f} | {s['p99']:.1f} | {rss_mb():.0f} "
                         f"| {time.perf_counter() - t0:.0f} |")
            print(lines[-1], flush=True)
            rec.steps.clear()  # percentiles per stretch: a slowdown would show as a trend
            next_report += report_every
    frames += len(session.finish())
    print("\n".join(lines))
    print(f"{seconds:.0f} s: {frames} frames (floor(seconds x 25) = {frames_in(fed)}), "
          f"{args.model[0].name}, hop/la/ctx {hop}/{la}/{ctx} ms, {args.sampler} "
          f"{len(sampler.timesteps(loaded.model))} step(s), wall {time.perf_counter() - t0:.0f} s")
    return 0
