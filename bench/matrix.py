"""`dpt-live bench`: the latency benchmark matrix (docs/PERFORMANCE.md).

For every model (``--archs``: the trained demo model, the full-size reference architecture with
random weights, ...; plus ``--model`` directories) × engine backend × sampler steps × window, one
stream runs over the same clip through ``streaming.factory.build_session`` and is reported as

- time per step by stage: audio features, denoising, everything else (normalisation, window
  assembly, FLAME decoding);
- real-time factor, step p50/p95/p99, worst frame latency had the audio arrived in real time
  (replayed from the measured step times, streaming/metrics.py; or measured with ``--realtime``);
- network passes and GFLOP per second of audio, and the speedup over the reference offline sampler
  (timed in the same run: streaming/bench_cost.py) on the clock and in compute;
- with ``--sessions N``: N concurrent streams (threads, one session each, one loaded model), and how
  many keep up.

A backend that this build or machine lacks (``build_session`` raises UserError) becomes a
"skipped" row with the reason; any other failure a "failed" row, and the matrix goes on."""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.cost import SampleTimer, architecture_key, gflop_per_audio_s, network_flops, time_reference
from bench.stream_grid import bench_clock, rss_mb
from diffposetalk.errors import UserError
from diffposetalk.model import Guidance
from diffposetalk.model_dir import load_model_dir
from diffposetalk.sampler import make_sampler
from diffposetalk.units import FRAME_SAMPLES, SAMPLE_RATE
from streaming.factory import BACKENDS, build_session
from streaming.metrics import percentiles_ms, replay_latency
from streaming.report import StreamRecorder
from streaming.session import StreamConfig
from streaming.style import choose_style
from streaming.windowing import parse_windows

log = logging.getLogger("dpt_live.bench")

MODELS = Path(__file__).resolve().parent.parent / "models"
# --archs names of bundled trained models, and the architecture whose reference each is compared with
TRAINED = {"demo": (MODELS / "demo", "demo"), "demo-student": (MODELS / "demo-student", "demo")}

BLOCK = 320  # 20 ms source blocks, as a microphone delivers them and as the latency replay assumes
# The issue's targets (full-size architecture, ONNX Runtime, this 2-core CPU).
TARGET_RTF, TARGET_LATENCY_MS, TARGET_COMPUTE_SPEEDUP = 0.5, 400.0, 300.0


# --- parsing -------------------------------------------------------------------------------------
def split_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip() and x.strip() != "none"]


def parse_backends(text: str) -> list[tuple[str, str]]:
    """'name' or 'name:precision' (e.g. onnxruntime:int8, tensorrt:fp16) -> [(name, precision)]."""
    out = []
    for item in split_list(text):
        name, _, precision = item.partition(":")
        if name not in BACKENDS:
            raise UserError(f"--backends: unknown backend {name!r} (choose from {', '.join(BACKENDS)}, "
                            "optionally with :precision, e.g. onnxruntime:int8)")
        out.append((name, precision or "fp32"))
    return out


def parse_steps(text: str) -> list[int]:
    out = []
    for s in split_list(text):
        if not s.isdigit() or int(s) < 1:
            raise UserError(f"--steps: sampler steps are whole numbers >= 1, got {s!r}")
        out.append(int(s))
    if not out:
        raise UserError("--steps: give at least one step count, e.g. 1,2")
    return out


# --- models --------------------------------------------------------------------------------------
def arch_config(arch: str):
    """The ModelConfig of an --archs entry: a training/archs size, optionally with modifiers
    '+student[N]' (a distilled 1-step student with an N-frame window, default 8 as `dpt-live
    distill`) and '+small-encoder' (the demo model's 2-layer 128-d HuBERT in place of the arch's:
    what a distilled small audio encoder would cost)."""
    import dataclasses
    import re

    from diffposetalk.archs import ARCHS, HUBERT_DEMO, make_config

    base, *mods = arch.split("+")
    if base not in ARCHS:
        raise UserError(f"--archs: unknown architecture {base!r} in {arch!r} (choose from {', '.join(ARCHS)}, "
                        "optionally +student[N] and/or +small-encoder)")
    cfg = make_config(base)
    for mod in mods:
        student = re.fullmatch(r"student(\d*)", mod)
        if mod == "small-encoder":
            cfg = dataclasses.replace(cfg, hubert=dict(HUBERT_DEMO), audio_hidden=HUBERT_DEMO["hidden_size"])
        elif student:
            cfg = dataclasses.replace(cfg, kind="student", student_steps=1, n_motions=int(student.group(1) or 8))
        else:
            raise UserError(f"--archs: unknown modifier {mod!r} in {arch!r} (+student[N], +small-encoder)")
    cfg.description = f"random weights ({arch}), for timing only: dpt-live bench"
    return cfg.validate(f"--archs {arch}")


def arch_model_dir(arch: str, cache_dir: Path, seed: int = 0) -> Path:
    """demo, demo-student: the bundled trained models. Anything else (see arch_config): random
    weights (speed does not depend on the weights), built once and cached; rebuilt if the config
    changed."""
    if arch in TRAINED:
        path = TRAINED[arch][0]
        if not (path / "config.json").is_file():
            raise UserError(f"--archs {arch}: the bundled model {path} is not in this checkout")
        return path
    cfg = arch_config(arch)
    out = cache_dir / arch
    text = cfg.to_json() + "\n"
    if (out / "weights.safetensors").is_file() and (out / "config.json").is_file() \
            and (out / "config.json").read_text() == text:
        return out
    from diffposetalk.model import DiffPoseTalk
    from diffposetalk.model_dir import save_model_dir

    log.info("building the %s architecture with random weights under %s (once)", arch, out)
    torch.manual_seed(seed)
    model = DiffPoseTalk(cfg)
    rng = np.random.default_rng(seed)
    stats = {"shape_mean": np.zeros(100), "shape_std": np.ones(100), "exp_mean": np.zeros(50),
             "exp_std": np.ones(50), "pose_mean": np.zeros(6), "pose_std": np.full(6, 0.1)}
    styles = {"default": rng.normal(size=cfg.d_style).astype(np.float32)} if cfg.use_style else None
    tmp = cache_dir / f".{arch}.partial"
    save_model_dir(tmp, cfg, model, stats, styles)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)  # a half-written cache is never mistaken for a built one
    return out


# --- one stream ----------------------------------------------------------------------------------
@dataclass
class StreamRun:
    compute: list[float]
    features: list[float]
    denoise: list[float]
    frames: int
    measured_latency: list[float] | None  # emit - arrival per frame (realtime runs only)
    spec: object
    setup_s: float
    wall_s: float
    engine: str  # what the session actually ran on (build_session's description)


def make_session(loaded, sampler, guidance, style, config, backend: tuple[str, str], threads: int, clock):
    """A session with a step recorder and a denoising timer; setup time (export on first use
    included) measured on the wall."""
    rec = StreamRecorder()
    t0 = time.perf_counter()
    session = build_session(loaded, sampler, guidance, config, style, on_step=rec.on_step, backend=backend[0],
                            precision=backend[1], threads=threads, clock=clock)
    setup = time.perf_counter() - t0
    session.motion = timer = SampleTimer(session.motion, clock)
    return session, rec, timer, setup


def feed(session, rec: StreamRecorder, audio: np.ndarray, realtime: bool) -> float:
    """Feed ``audio`` in 20 ms blocks: as fast as possible, or each block when it would have been
    spoken (stamped with that time, so queueing behind a slow step counts as latency)."""
    t0 = time.perf_counter()
    for i in range(0, len(audio), BLOCK):
        chunk = audio[i:i + BLOCK]
        if realtime:
            due = t0 + (i + len(chunk)) / SAMPLE_RATE
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            rec.on_frames(session.feed(chunk, arrival=due))
        else:
            rec.on_frames(session.feed(chunk))
    rec.on_frames(session.finish())
    return time.perf_counter() - t0


def stream_once(loaded, sampler, guidance, style, config, audio, backend, threads, clock, realtime) -> StreamRun:
    session, rec, timer, setup = make_session(loaded, sampler, guidance, style, config, backend, threads, clock)
    wall = feed(session, rec, audio, realtime)
    return StreamRun([s.compute_s for s in rec.steps], [s.features_s for s in rec.steps], timer.seconds,
                     len(rec.frames), [f.latency for f in rec.frames] if realtime else None, session.spec,
                     setup, wall, getattr(session, "backend", backend[0]))


def summarise(run: StreamRun, audio_s: float, per_window_passes: int, flops: dict) -> dict:
    """per_window_passes: denoiser passes of one streaming step (sampler steps × guided passes)."""
    n = len(run.compute)
    compute, feats, den = (np.asarray(x, dtype=np.float64) for x in (run.compute, run.features, run.denoise))
    other = compute - feats - den
    replayed = replay_latency(run.compute, run.spec, run.frames, BLOCK)
    measured = percentiles_ms(run.measured_latency) if run.measured_latency is not None else None
    return {
        "engine": run.engine, "audio_seconds": round(audio_s, 3), "frames": run.frames, "steps_run": n,
        "setup_s": round(run.setup_s, 3), "wall_s": round(run.wall_s, 3),
        "rtf": float(compute.sum() / audio_s),
        "stage_ms": {"features": round(float(feats.mean() * 1000), 2), "denoise": round(float(den.mean() * 1000), 2),
                     "other": round(float(other.mean() * 1000), 2)},
        "stage_rtf": {"features": float(feats.sum() / audio_s), "denoise": float(den.sum() / audio_s),
                      "other": float(other.sum() / audio_s)},
        "step_ms": percentiles_ms(run.compute),
        "replayed_latency_ms": percentiles_ms(replayed),
        "measured_latency_ms": measured,
        "worst_latency_ms": (measured or percentiles_ms(replayed))["max"],
        "passes_per_step": per_window_passes,
        "passes_per_audio_s": n * per_window_passes / audio_s,
        "encoder_passes_per_audio_s": n / audio_s,
        "ms_per_pass": round(float(den.mean() * 1000 / per_window_passes), 2),
        "gflop_per_step": (flops["encoder"] + per_window_passes * flops["pass"]) / 1e9,
        "gflop_per_audio_s": gflop_per_audio_s(n, audio_s, flops, per_window_passes),
        "rss_mb": round(rss_mb(), 0),
    }


def run_concurrent(loaded, sampler, guidance, style, config, audio, backend, threads: int, n: int,
                   realtime: bool, budget_ms: float) -> dict:
    """``n`` streams at once, one thread and one session each, sharing the loaded model. Timed on
    the wall clock (contention is the point). A stream keeps up when its step compute stays below
    its audio time (RTF < 1); 'within budget' when its worst frame latency is within ``budget_ms``."""
    built = [make_session(loaded, sampler, guidance, style, config, backend, threads, time.perf_counter)
             for _ in range(n)]
    start = threading.Barrier(n)
    results: list[dict | None] = [None] * n
    errors: list[str] = []

    def worker(i):
        session, rec, _timer, _setup = built[i]
        try:
            start.wait()
            wall = feed(session, rec, audio, realtime)
            compute = [s.compute_s for s in rec.steps]
            lat = ([f.latency for f in rec.frames] if realtime
                   else replay_latency(compute, session.spec, len(rec.frames), BLOCK))
            rtf = sum(compute) / (len(audio) / SAMPLE_RATE)
            worst = float(np.max(lat)) * 1000
            results[i] = {"rtf": round(rtf, 4), "worst_latency_ms": round(worst, 1), "wall_s": round(wall, 3),
                          "step_p50_ms": percentiles_ms(compute)["p50"], "keeps_up": rtf < 1,
                          "within_budget": rtf < 1 and worst <= budget_ms}
        except Exception as exc:  # reported in the row; the other threads finish
            errors.append(f"session {i}: {type(exc).__name__}: {exc}")
            start.abort()

    threads = [threading.Thread(target=worker, args=(i,), name=f"bench-session-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    return {"n": n, "clock": "wall", "latency": "measured" if realtime else "replayed",
            "keep_up": sum(r["keeps_up"] for r in results), "within_budget": sum(r["within_budget"] for r in results),
            "latency_budget_ms": budget_ms, "per_session": results}


# --- the matrix ----------------------------------------------------------------------------------
def load_clip(path: str, seconds: float, seed: int) -> tuple[np.ndarray, str]:
    if path == "synthetic":
        from diffposetalk.synth_audio import speechlike

        return speechlike(seconds, seed), f"synthetic speech-like audio (seed {seed})"
    from diffposetalk.audio_io import load_audio

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--audio: file not found: {p}")
    audio = load_audio(p)
    n = min(len(audio), round(seconds * SAMPLE_RATE))
    if n < FRAME_SAMPLES:
        raise UserError(f"--audio {p}: {n / SAMPLE_RATE:.3f} s is shorter than one 40 ms motion frame")
    return audio[:n].astype(np.float32), str(p)


def machine_info() -> dict:
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_average": [round(x, 2) for x in os.getloadavg()]}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def _targets(row: dict) -> dict:
    return {"rtf": row["rtf"] <= TARGET_RTF, "latency": row["worst_latency_ms"] <= TARGET_LATENCY_MS,
            "compute_speedup": (row.get("speedup_compute") or 0) >= TARGET_COMPUTE_SPEEDUP}


def run_matrix(args, progress: Callable[[str], None] = print) -> dict:
    """Runs everything the arguments ask for and returns the result (the JSON document)."""
    if args.clock == "cpu" and args.threads != 1:
        raise UserError("--clock cpu measures the calling thread only: use --threads 1")
    if args.clock == "cpu" and args.realtime:
        raise UserError("--realtime measures latency on the wall clock: leave out --clock cpu")
    if args.sessions < 1:
        raise UserError("--sessions must be at least 1")
    backends = parse_backends(args.backends)
    steps_list = parse_steps(args.steps)
    windows = parse_windows(args.windows, "--windows", args.context_ms)
    archs = split_list(args.archs)
    if not backends:
        raise UserError("--backends: give at least one backend")
    # (name, directory, the architecture whose reference sampler it is compared with: an --archs
    # variant such as full+student with its base, full; a --model directory by its network sizes)
    models = [(a, arch_model_dir(a, args.cache_dir, args.seed), TRAINED[a][1] if a in TRAINED else a.split("+")[0])
              for a in archs]
    models += [(Path(m).name, Path(m), None) for m in (args.model or [])]
    if not models:
        raise UserError("nothing to measure: give --archs and/or --model")
    torch.set_num_threads(args.threads)
    clock = bench_clock(args)
    audio, audio_name = load_clip(str(args.audio), args.seconds, args.seed)
    audio_s = len(audio) / SAMPLE_RATE
    guidance = Guidance()
    result = {"settings": {"audio": audio_name, "audio_seconds": round(audio_s, 3),
                           "backends": [f"{b}:{p}" for b, p in backends],
                           "models": [f"{n} ({p})" for n, p, _ in models], "steps": steps_list,
                           "windows": [f"{h}/{la}/{c}" for h, la, c in windows], "clock": args.clock,
                           "threads": args.threads, "realtime": args.realtime, "sessions": args.sessions,
                           "reference_seconds": args.reference_seconds, "reference_steps": args.reference_steps,
                           "block_ms": BLOCK * 1000 // SAMPLE_RATE, "seed": args.seed,
                           "targets": {"rtf": TARGET_RTF, "worst_latency_ms": TARGET_LATENCY_MS,
                                       "compute_speedup": TARGET_COMPUTE_SPEEDUP}},
              "machine": machine_info(), "references": [], "rows": []}
    loaded_models = []
    for name, path, base in models:
        loaded = load_model_dir(path)
        chosen = choose_style(loaded, args.style, any_preset=True, random_seed=args.seed)  # style guidance measured
        style, style_name = chosen.vector, chosen.label
        loaded_models.append((name, loaded, style, style_name, base))

    # the reference offline sampler, once per teacher architecture
    refs: dict[str, dict] = {}  # architecture_key -> reference result
    row_ref: dict[str, str] = {}  # model name -> architecture_key of its reference
    if args.reference_seconds > 0:
        piece = audio[:round(args.reference_seconds * SAMPLE_RATE)]
        teachers = {}  # reference name -> (loaded, style, style name)
        for name, loaded, style, style_name, base in loaded_models:
            if base is not None and base != name:  # an architecture variant: its base architecture's reference
                if base not in teachers:
                    tl = next((m for m in loaded_models if m[0] == base), None)
                    if tl is None:
                        tl_loaded = load_model_dir(arch_model_dir(base, args.cache_dir, args.seed))
                        chosen = choose_style(tl_loaded, args.style, any_preset=True, random_seed=args.seed)
                        tl = (base, tl_loaded, chosen.vector, chosen.label)
                    teachers[base] = tl[1:4]
                row_ref[name] = architecture_key(teachers[base][0])
            elif loaded.config.kind != "student":
                teachers.setdefault(name, (loaded, style, style_name))
                row_ref[name] = architecture_key(loaded)
        for name, (loaded, style, style_name) in teachers.items():
            key = architecture_key(loaded)
            if key in refs:
                continue
            progress(f"reference sampler on {name}: {len(piece) / SAMPLE_RATE:.2f} s of audio, "
                     f"{args.reference_steps or loaded.config.n_diff_steps} of {loaded.config.n_diff_steps} steps timed ...")
            flops = network_flops(loaded, None, guidance, style)
            ref = time_reference(loaded, piece, guidance, style, clock, args.reference_steps, args.seed, flops)
            ref.update(model=name, style=style_name, backend="torch")
            refs[key] = ref
            result["references"].append(ref)
            progress(f"  {ref['seconds']:.1f} s -> {ref['rtf']:.2f} s per second of audio, "
                     f"{ref['passes_per_audio_s']:.0f} passes/s, {ref['gflop_per_audio_s']:.1f} GFLOP/s")

    flops_cache: dict = {}
    failed = 0
    for name, loaded, style, style_name, _base in loaded_models:
        # a student directory: the reference of a teacher with the same network sizes, if one ran
        ref = refs.get(row_ref.get(name, architecture_key(loaded)))
        ref_name = ref["model"] if ref else None
        step_counts = [None] if loaded.config.kind == "student" else steps_list
        for backend in backends:
            for steps in step_counts:
                for hop, la, ctx in windows:
                    row = {"model": name, "kind": loaded.config.kind, "backend": backend[0],
                           "precision": backend[1], "hop_ms": hop, "lookahead_ms": la, "context_ms": ctx,
                           "style": style_name}
                    try:
                        sampler = make_sampler("ddim", steps, loaded.model)  # steps None: a student's own
                        n_steps = len(sampler.timesteps(loaded.model))
                        row["denoiser_steps"] = n_steps
                        config = StreamConfig(hop, la, ctx, seed=args.seed)
                        key = (id(loaded), config.spec().window_samples)
                        if key not in flops_cache:
                            flops_cache[key] = network_flops(loaded, config.spec().window_samples, guidance, style)
                        per_window = sampler.passes_per_window(loaded.model, guidance, style is not None)
                        run = stream_once(loaded, sampler, guidance, style, config, audio, backend, args.threads,
                                          clock, args.realtime)
                        row.update(status="ok", **summarise(run, audio_s, per_window, flops_cache[key]))
                        if ref is not None:
                            row["reference"] = ref_name
                            row["speedup_time"] = ref["rtf"] / row["rtf"]
                            row["speedup_compute"] = ref["gflop_per_audio_s"] / row["gflop_per_audio_s"]
                        row["targets_met"] = _targets(row)
                        if args.sessions > 1:
                            row["concurrent"] = run_concurrent(loaded, sampler, guidance, style, config, audio,
                                                               backend, args.threads, args.sessions, args.realtime,
                                                               args.latency_budget_ms)
                    except UserError as exc:  # this build or machine lacks the backend (or bad settings)
                        row.update(status="skipped", reason=str(exc))
                    except Exception as exc:
                        failed += 1
                        log.debug("row failed", exc_info=True)
                        row.update(status="failed", reason=f"{type(exc).__name__}: {exc}",
                                   traceback=traceback.format_exc(limit=4))
                    result["rows"].append(row)
                    progress(one_line(row))
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["failed"] = failed
    return result


def one_line(row: dict) -> str:
    head = (f"{row['model']} {row['backend']} {row['precision']} {row.get('denoiser_steps', '?')} step(s) "
            f"{row['hop_ms']}/{row['lookahead_ms']}/{row['context_ms']}")
    if row["status"] != "ok":
        return f"{head}: {row['status']}: {row['reason']}"
    s = row["step_ms"]
    text = (f"{head}: RTF {row['rtf']:.2f}, step {s['p50']:.0f}/{s['p95']:.0f}/{s['p99']:.0f} ms "
            f"(features {row['stage_ms']['features']:.0f}, denoise {row['stage_ms']['denoise']:.0f}), "
            f"worst latency {row['worst_latency_ms']:.0f} ms, {row['gflop_per_audio_s']:.1f} GFLOP/s audio")
    if "speedup_compute" in row:
        text += f", {row['speedup_time']:.0f}x time / {row['speedup_compute']:.0f}x compute vs reference"
    if "concurrent" in row:
        c = row["concurrent"]
        text += f", {c['keep_up']}/{c['n']} concurrent streams keep up"
    return text
