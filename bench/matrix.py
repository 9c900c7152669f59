"""The benchmark family's runner (docs/PERFORMANCE.md): `dpt-live bench` runs it with its options,
`dpt-live stream-bench` is a preset of it (bench/stream_grid.py).

For every model (``archs``: the trained demo model, the full-size reference architecture with
random weights, ...; plus model directories) × engine backend × sampler steps × window, one
stream runs over the same clip through ``streaming.factory.build_session`` (bench/timed_stream.py)
and is reported as

- time per step by stage: audio features, denoising, everything else (normalisation, window
  assembly, FLAME decoding);
- real-time factor, step p50/p95/p99, worst frame latency had the audio arrived in real time
  (replayed from the measured step times, streaming/metrics.py; or measured with ``realtime``);
- seam smoothness, and with ``offline`` the fidelity to offline generation (bench/fidelity.py);
- network passes and GFLOP per second of audio, and the speedup over the reference offline sampler
  (timed in the same run: bench/cost.py) on the clock and in compute;
- with ``sessions`` N > 1: N concurrent streams (threads, one session each, one loaded model), and
  how many keep up.

A backend that this build or machine lacks (``build_session`` raises UserError) becomes a
"skipped" row with the reason; any other failure a "failed" row, and the matrix goes on (unless
the plan is ``strict``)."""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.archs import arch_model_dir, reference_arch
from bench.common import BLOCK, choose_clock, default_cache_dir, load_clip, pick_style, rss_mb
from bench.cost import architecture_key, gflop_per_audio_s, network_flops, time_reference
from bench.fidelity import offline_arrays, offline_features, seams, stream_vs_offline
from bench.timed_stream import StreamRun, feed, make_session, stream_once
from diffposetalk.errors import UserError
from diffposetalk.model import Guidance
from diffposetalk.model_dir import load_model_dir
from diffposetalk.paths import DEMO_AUDIO
from diffposetalk.sampler import make_sampler
from diffposetalk.units import FRAME_SAMPLES, SAMPLE_RATE
from streaming.factory import BACKENDS
from streaming.metrics import percentiles_ms, replay_latency
from streaming.session import StreamConfig
from streaming.windowing import default_regen_ms

log = logging.getLogger("dpt_live.bench")

# The issue's targets (full-size architecture, ONNX Runtime, this 2-core CPU).
TARGET_RTF, TARGET_LATENCY_MS, TARGET_COMPUTE_SPEEDUP = 0.5, 400.0, 300.0


@dataclass
class Plan:
    """What one benchmark run measures. The defaults are `dpt-live bench`'s."""

    audio: str | None = str(DEMO_AUDIO)  # a file, or None / 'synthetic' for speech-like audio
    seconds: float | None = 8.0  # the file's first SECONDS (None: all of it); the synthetic audio's length
    archs: list[str] = field(default_factory=lambda: ["demo", "full"])  # bench/archs.py
    models: list[Path] = field(default_factory=list)  # model directories
    backends: list[tuple[str, str]] = field(default_factory=lambda: [("torch", "fp32"), ("onnxruntime", "fp32")])
    sampler: str = "ddim"
    # sampler steps; None: the stream commands' default for each model (streaming.setup.pick_sampler)
    steps: list[int] | None = field(default_factory=lambda: [1, 2])
    students_own_steps: bool = True  # a distilled student runs its own step count whatever ``steps`` say
    windows: list[tuple[int, int, int]] = field(default_factory=lambda: [(80, 80, 1600), (160, 80, 1600)])
    style: str | None = None
    random_style: bool = True  # bench/common.py: pick_style
    seam_blend: bool = True
    offline: bool = False  # compare every stream with offline generation (fidelity, feature cosine)
    count_flops: bool = True  # GFLOP per second of audio (one extra pass of each network per window)
    reference_seconds: float = 4.0  # audio the reference DDPM sampler is timed on (0: not timed)
    reference_steps: int | None = None
    sessions: list[int] = field(default_factory=lambda: [1])
    per_thread: bool = False  # concurrent streams without the batching scheduler
    device: str = "cpu"  # where the torch backend's models run (cuda: --backends torch only)
    max_batch: int = 32
    latency_budget_ms: float = 400.0
    realtime: bool = False
    clock: str = "wall"
    threads: int = 1
    seed: int = 0
    cache_dir: Path | None = None  # random-weight architectures (None: bench/common.py default_cache_dir)
    strict: bool = False  # raise at the first configuration that cannot run instead of a skipped/failed row

    def check(self) -> None:
        choose_clock(self.clock, self.threads)
        if self.clock == "cpu" and self.realtime:
            raise UserError("--realtime measures latency on the wall clock: leave out --clock cpu")
        if not self.sessions or min(self.sessions) < 1:
            raise UserError("--sessions must be at least 1")
        if self.max_batch < 1:
            raise UserError("--max-batch must be at least 1")
        if self.device != "cpu" and any(b != "torch" for b, _ in self.backends):
            raise UserError(f"--device {self.device} runs the torch backend's models: give --backends torch "
                            "(ONNX Runtime and TensorRT choose their own devices)")
        if not self.backends:
            raise UserError("--backends: give at least one backend")
        if self.steps is not None and not self.steps:
            raise UserError("--steps: give at least one step count, e.g. 1,2")
        if not self.windows:
            raise UserError("--windows: give at least one hop/lookahead, e.g. 80/80")


# --- parsing of `bench`'s list options -----------------------------------------------------------
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


def parse_windows(text: str, context_ms: int) -> list[tuple[int, int, int]]:
    """--windows: 'hop/lookahead' (context from --context-ms) or 'hop/lookahead/context', in ms."""
    from streaming.windowing import parse_windows as parse

    return parse(text, "--windows", default_context_ms=context_ms)


def bench_plan(args) -> Plan:
    """The Plan of `dpt-live bench`'s options."""
    return Plan(audio=str(args.audio), seconds=args.seconds, archs=split_list(args.archs),
                models=[Path(m) for m in (args.model or [])], backends=parse_backends(args.backends),
                steps=parse_steps(args.steps), windows=parse_windows(args.windows, args.context_ms),
                style=args.style, seam_blend=not args.no_seam_blend, offline=args.fidelity,
                reference_seconds=args.reference_seconds, reference_steps=args.reference_steps,
                sessions=parse_sessions(args.sessions), per_thread=args.per_thread, max_batch=args.max_batch,
                device=args.device,
                latency_budget_ms=args.latency_budget_ms, realtime=args.realtime,
                clock=args.clock, threads=args.threads, seed=args.seed, cache_dir=args.cache_dir)


# --- one configuration ---------------------------------------------------------------------------
def step_counts(loaded, plan: Plan) -> list[int | None]:
    """The sampler step counts ``loaded`` runs with; None: its default (a student's own count)."""
    if plan.steps is None or (loaded.config.kind == "student" and plan.students_own_steps):
        return [None]
    return list(plan.steps)


def row_sampler(loaded, plan: Plan, steps: int | None):
    if plan.steps is None:  # as `stream` would run the model
        from streaming.setup import pick_sampler

        return pick_sampler(plan.sampler, None, loaded)
    return make_sampler(plan.sampler, steps, loaded.model)  # steps None: a student's own


def summarise(run: StreamRun, audio_s: float, per_window_passes: int, flops: dict | None) -> dict:
    """per_window_passes: denoiser passes of one streaming step (sampler steps × guided passes);
    flops: bench/cost.py network_flops of the window (None: not counted)."""
    n = len(run.compute)
    compute, feats, den = (np.asarray(x, dtype=np.float64) for x in (run.compute, run.features, run.denoise))
    other = compute - feats - den
    replayed = replay_latency(run.compute, run.spec, run.frames, BLOCK)
    measured = percentiles_ms(run.measured_latency) if run.measured_latency is not None else None
    row = {
        "engine": run.engine, "audio_seconds": round(audio_s, 3), "frames": run.frames, "steps_run": n,
        "setup_s": round(run.setup_s, 3), "wall_s": round(run.wall_s, 3),
        "rtf": float(compute.sum() / audio_s),
        "stage_ms": {"features": round(float(feats.mean() * 1000), 2), "denoise": round(float(den.mean() * 1000), 2),
                     "other": round(float(other.mean() * 1000), 2)},
        "stage_rtf": {"features": float(feats.sum() / audio_s), "denoise": float(den.sum() / audio_s),
                      "other": float(other.sum() / audio_s)},
        "step_ms": percentiles_ms(run.compute),
        "features_ms": percentiles_ms(run.features),
        "replayed_latency_ms": percentiles_ms(replayed),
        "measured_latency_ms": measured,
        "worst_latency_ms": (measured or percentiles_ms(replayed))["max"],
        "seams": seams(run.recorder, run.spec.hop),
        "passes_per_step": per_window_passes,
        "passes_per_audio_s": n * per_window_passes / audio_s,
        "encoder_passes_per_audio_s": n / audio_s,
        "ms_per_pass": round(float(den.mean() * 1000 / per_window_passes), 2),
    }
    if flops is not None:
        row["gflop_per_step"] = (flops["encoder"] + per_window_passes * flops["pass"]) / 1e9
        row["gflop_per_audio_s"] = gflop_per_audio_s(n, audio_s, flops, per_window_passes)
    row["rss_mb"] = round(rss_mb(), 0)
    return row


def parse_sessions(text) -> list[int]:
    """--sessions: one stream count or a comma-separated list (the curve up to overload)."""
    try:
        counts = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError as exc:
        raise UserError(f"--sessions wants stream counts, e.g. 8 or 8,16,32, got {text!r}") from exc
    return counts or [1]


def run_concurrent(loaded, sampler, guidance, style, config, audio, backend, threads: int, n: int,
                   realtime: bool, budget_ms: float, batched: bool = True, max_batch: int = 32,
                   scheduler=None) -> dict:
    """``n`` streams at once, one thread and one session each, sharing the loaded model. Timed on
    the wall clock (contention is the point). ``batched``: the sessions' network calls go through
    one batching scheduler (streaming/scheduler.py), fed in real time (a scheduler plans with
    deadlines: replayed latency would mean nothing); else each calls its networks itself at batch
    1. A stream keeps up when its step compute stays below its audio time (RTF < 1) and it shed
    no step; 'within budget' when its worst frame latency is within
    ``budget_ms``. scheduler: one to use instead (e.g. server/remote_scheduler.py's, on Ray
    replicas); the caller closes it."""
    from streaming.factory import make_scheduler

    given = scheduler is not None
    if batched:
        realtime = True
        if not given:
            scheduler = make_scheduler(loaded, backend[0], backend[1], threads, max_batch=max_batch,
                                       latency_budget_ms=budget_ms)
    try:
        built = [make_session(loaded, sampler, guidance, style, config.__class__(**{**vars(config), "seed": i}),
                              backend, threads, time.perf_counter, scheduler=scheduler) for i in range(n)]
        load, cpu = os.getloadavg()[0], time.process_time()
        results = _run_streams(built, audio, realtime, budget_ms, batched)
        cpu = time.process_time() - cpu  # the whole process: sessions, scheduler, runtimes
        stats = scheduler.stats() if scheduler is not None else None
    finally:
        if scheduler is not None and not given:
            scheduler.close()
    feed_lag = results[0].pop("feed_lag_ms", None) if results else None
    out = {"n": n, "clock": "wall", "latency": "measured" if realtime else "replayed",
           "mode": "scheduler" if batched else "per-thread",
           "keep_up": sum(r["keeps_up"] for r in results), "within_budget": sum(r["within_budget"] for r in results),
           "latency_budget_ms": budget_ms, "per_session": results,
           # CPU seconds per second of one stream, and the machine's load when the streams began
           "cpu_per_stream_s": round(cpu / (n * len(audio) / SAMPLE_RATE), 4), "load_average": round(load, 2)}
    if feed_lag is not None:  # one thread fed every stream: how late it handed their blocks over
        out["feed_lag_ms"] = feed_lag
    if stats is not None:
        out["scheduler"] = {k: stats[k] for k in ("batch_sizes", "shed", "queue_depth_max", "late", "call_ms")}
        out["shed_steps"] = sum(r["shed_steps"] for r in results)
    return out


def _stream_result(timed, audio, realtime: bool, budget_ms: float, wall: float) -> dict:
    rec = timed.recorder
    compute = [s.compute_s for s in rec.steps]
    lat = ([f.latency for f in rec.frames] if realtime
           else replay_latency(compute, timed.session.spec, len(rec.frames), BLOCK))
    rtf = sum(compute) / (len(audio) / SAMPLE_RATE)
    worst = float(np.max(lat)) * 1000
    shed = sum(1 for s in rec.steps if getattr(s, "shed", None))
    keeps_up = rtf < 1 and shed == 0  # a shed step is audio the stream could not keep up with
    return {"rtf": round(rtf, 4), "worst_latency_ms": round(worst, 1), "wall_s": round(wall, 3),
            "step_p50_ms": percentiles_ms(compute)["p50"], "keeps_up": keeps_up,
            "within_budget": keeps_up and worst <= budget_ms, "shed_steps": shed}


def _run_streams(built, audio, realtime: bool, budget_ms: float, batched: bool) -> list[dict]:
    if batched and all(t.session.run_async(t.recorder.on_frames) for t in built):
        return _feed_together(built, audio, budget_ms)
    n = len(built)
    start = threading.Barrier(n)
    results: list[dict | None] = [None] * n
    errors: list[str] = []

    def worker(i):
        timed = built[i]
        try:
            start.wait()
            wall = feed(timed, audio, realtime)
            results[i] = _stream_result(timed, audio, realtime, budget_ms, wall)
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
    return results


def _feed_together(built, audio, budget_ms: float) -> list[dict]:
    """Real-time streams on a batching scheduler as the server runs them: one thread (the
    server's event loop, where each upstream client's audio arrives) hands every session its 20 ms
    blocks as they fall due, and the steps run on the scheduler's workers (StreamSession.run_async).
    The streams start spread evenly over one hop, as independent speakers would, not in lockstep."""
    n = len(built)
    hop_s = built[0].session.spec.hop * FRAME_SAMPLES / SAMPLE_RATE
    t0 = time.perf_counter() + 0.05
    starts = [t0 + hop_s * k / n for k in range(n)]
    due = [(starts[k] + min(i + BLOCK, len(audio)) / SAMPLE_RATE, k, i)
           for k in range(n) for i in range(0, len(audio), BLOCK)]
    due.sort()
    lag = []  # how late each block was handed over (the feeding thread behind: the process is saturated)
    for when, k, i in due:
        wait = when - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        else:
            lag.append(-wait)
        built[k].session.feed(audio[i:i + BLOCK], arrival=when)
    feed_lag_ms = percentiles_ms(lag + [0.0] * (len(due) - len(lag)))
    for timed in built:  # every stream's last steps at once, then wait for them
        timed.session.end()
    results = []
    for k, timed in enumerate(built):
        timed.recorder.on_frames(timed.session.finish())
        results.append(_stream_result(timed, audio, True, budget_ms, time.perf_counter() - starts[k]))
    results[0]["feed_lag_ms"] = feed_lag_ms  # run_concurrent moves it to the row
    return results


# --- the matrix ----------------------------------------------------------------------------------
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


def run_matrix(plan: Plan, progress: Callable[[str], None] = print,
               row_line: Callable[[dict], str] | None = None) -> dict:
    """Runs everything the plan asks for and returns the result (the JSON document). progress:
    one line per reference run and per row (``row_line``, default :func:`one_line`, formats rows)."""
    plan.check()
    row_line = row_line or one_line
    cache_dir = plan.cache_dir or default_cache_dir()
    # (name, directory, the architecture whose reference sampler it is compared with: an --archs
    # variant such as full+student with its base, full; a --model directory by its network sizes)
    models = [(a, arch_model_dir(a, cache_dir, plan.seed), reference_arch(a)) for a in plan.archs]
    models += [(Path(m).name, Path(m), None) for m in plan.models]
    if not models:
        raise UserError("nothing to measure: give --archs and/or --model")
    torch.set_num_threads(plan.threads)
    clock = choose_clock(plan.clock, plan.threads)
    audio, audio_name = load_clip(plan.audio, plan.seconds, plan.seed)
    audio_s = len(audio) / SAMPLE_RATE
    guidance = Guidance()
    result = {"settings": {"audio": audio_name, "audio_seconds": round(audio_s, 3),
                           "backends": [f"{b}:{p}" for b, p in plan.backends],
                           "models": [f"{n} ({p})" for n, p, _ in models],
                           "steps": plan.steps if plan.steps is not None else "default",
                           "windows": [f"{h}/{la}/{c}" for h, la, c in plan.windows], "clock": plan.clock,
                           "threads": plan.threads, "realtime": plan.realtime, "sessions": plan.sessions,
                           "sessions_mode": "per-thread" if plan.per_thread else "scheduler",
                           "reference_seconds": plan.reference_seconds, "reference_steps": plan.reference_steps,
                           "block_ms": BLOCK * 1000 // SAMPLE_RATE, "seed": plan.seed,
                           "sampler": plan.sampler, "seam_blend": plan.seam_blend, "offline": plan.offline,
                           "targets": {"rtf": TARGET_RTF, "worst_latency_ms": TARGET_LATENCY_MS,
                                       "compute_speedup": TARGET_COMPUTE_SPEEDUP}},
              "machine": machine_info(), "references": [], "rows": []}
    loaded_models = []
    for name, path, base in models:
        loaded = load_model_dir(path, plan.device)
        style, style_name = pick_style(loaded, plan.style, plan.seed, plan.random_style)
        loaded_models.append((name, loaded, style, style_name, base))

    refs, row_ref = time_references(plan, loaded_models, audio, guidance, clock, cache_dir, progress, result)

    flops_cache: dict = {}
    failed = 0
    for name, loaded, style, style_name, _base in loaded_models:
        # a student directory: the reference of a teacher with the same network sizes, if one ran
        ref = refs.get(row_ref.get(name, architecture_key(loaded)))
        offline_feats = None  # computed once per model, when the first row needs it
        offline_motion: dict = {}  # per sampler step count
        for backend in plan.backends:
            for steps in step_counts(loaded, plan):
                for hop, la, ctx in plan.windows:
                    row = {"model": name, "kind": loaded.config.kind, "backend": backend[0],
                           "precision": backend[1], "hop_ms": hop, "lookahead_ms": la, "context_ms": ctx,
                           "regen_ms": default_regen_ms(hop), "style": style_name}
                    try:
                        sampler = row_sampler(loaded, plan, steps)
                        n_steps = len(sampler.timesteps(loaded.model))
                        row["denoiser_steps"] = n_steps
                        # the window as stream/serve run it (a 40 ms hop regenerates a frame)
                        config = StreamConfig(hop, la, ctx, row["regen_ms"], seed=plan.seed, seam_blend=plan.seam_blend)
                        flops = None
                        if plan.count_flops:
                            # a streaming encoder encodes a hop per step, not the window
                            chunk = (config.spec().hop * FRAME_SAMPLES
                                     if config.uses_stream_encoder(loaded.config.stream_encoder is not None) else None)
                            key = (id(loaded), config.spec().window_samples, chunk)
                            if key not in flops_cache:
                                flops_cache[key] = network_flops(loaded, config.spec().window_samples, guidance,
                                                                 style, stream_chunk=chunk)
                            flops = flops_cache[key]
                        if plan.offline and n_steps not in offline_motion:
                            offline_motion[n_steps] = offline_arrays(loaded, sampler, guidance, style, audio,
                                                                     plan.seed)
                            if offline_feats is None:
                                offline_feats = offline_features(loaded, audio)
                        per_window = sampler.passes_per_window(loaded.model, guidance, style is not None)
                        run = stream_once(loaded, sampler, guidance, style, config, audio, backend, plan.threads,
                                          clock, plan.realtime, tap_features=plan.offline)
                        row.update(status="ok", **summarise(run, audio_s, per_window, flops))
                        if plan.offline:
                            row["fidelity"] = stream_vs_offline(run.recorder, run.streamed_features,
                                                                (offline_motion[n_steps], offline_feats))
                        if ref is not None:
                            row["reference"] = ref["model"]
                            row["speedup_time"] = ref["rtf"] / row["rtf"]
                            if "gflop_per_audio_s" in ref and "gflop_per_audio_s" in row:
                                row["speedup_compute"] = ref["gflop_per_audio_s"] / row["gflop_per_audio_s"]
                        row["targets_met"] = _targets(row)
                        curve = [run_concurrent(loaded, sampler, guidance, style, config, audio, backend,
                                                plan.threads, n, plan.realtime, plan.latency_budget_ms,
                                                batched=not plan.per_thread, max_batch=plan.max_batch)
                                 for n in plan.sessions if n > 1]
                        if curve:
                            row["concurrent"] = curve[-1]
                            if len(curve) > 1:
                                row["concurrent_curve"] = curve
                    except UserError as exc:  # this build or machine lacks the backend (or bad settings)
                        if plan.strict:
                            raise
                        row.update(status="skipped", reason=str(exc))
                    except Exception as exc:
                        if plan.strict:
                            raise
                        failed += 1
                        log.debug("row failed", exc_info=True)
                        row.update(status="failed", reason=f"{type(exc).__name__}: {exc}",
                                   traceback=traceback.format_exc(limit=4))
                    result["rows"].append(row)
                    progress(row_line(row))
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["failed"] = failed
    return result


def time_references(plan: Plan, loaded_models, audio, guidance, clock, cache_dir, progress,
                    result) -> tuple[dict[str, dict], dict[str, str]]:
    """The reference offline sampler, once per teacher architecture: ({architecture_key:
    reference result}, {model name: architecture_key of its reference}). Appends each reference
    to result['references']."""
    refs: dict[str, dict] = {}
    row_ref: dict[str, str] = {}
    if plan.reference_seconds <= 0:
        return refs, row_ref
    piece = audio[:round(plan.reference_seconds * SAMPLE_RATE)]
    teachers = {}  # reference name -> (loaded, style, style name)
    for name, loaded, style, style_name, base in loaded_models:
        if base is not None and base != name:  # an architecture variant: its base architecture's reference
            if base not in teachers:
                tl = next((m for m in loaded_models if m[0] == base), None)
                if tl is None:
                    tl_loaded = load_model_dir(arch_model_dir(base, cache_dir, plan.seed))
                    tl = (base, tl_loaded, *pick_style(tl_loaded, plan.style, plan.seed, plan.random_style))
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
                 f"{plan.reference_steps or loaded.config.n_diff_steps} of {loaded.config.n_diff_steps} steps timed ...")
        flops = network_flops(loaded, None, guidance, style) if plan.count_flops else None
        ref = time_reference(loaded, piece, guidance, style, clock, plan.reference_steps, plan.seed, flops)
        ref.update(model=name, style=style_name, backend="torch")
        refs[key] = ref
        result["references"].append(ref)
        line = (f"  {ref['seconds']:.1f} s -> {ref['rtf']:.2f} s per second of audio, "
                f"{ref['passes_per_audio_s']:.0f} passes/s")
        progress(line + (f", {ref['gflop_per_audio_s']:.1f} GFLOP/s" if "gflop_per_audio_s" in ref else ""))
    return refs, row_ref


def one_line(row: dict) -> str:
    head = (f"{row['model']} {row['backend']} {row['precision']} {row.get('denoiser_steps', '?')} step(s) "
            f"{row['hop_ms']}/{row['lookahead_ms']}/{row['context_ms']}{'+r' + str(row['regen_ms']) if row.get('regen_ms') else ''}")
    if row["status"] != "ok":
        return f"{head}: {row['status']}: {row['reason']}"
    s = row["step_ms"]
    text = (f"{head}: RTF {row['rtf']:.2f}, step {s['p50']:.0f}/{s['p95']:.0f}/{s['p99']:.0f} ms "
            f"(features {row['stage_ms']['features']:.0f}, denoise {row['stage_ms']['denoise']:.0f}), "
            f"worst latency {row['worst_latency_ms']:.0f} ms")
    if "gflop_per_audio_s" in row:
        text += f", {row['gflop_per_audio_s']:.1f} GFLOP/s audio"
    if "speedup_compute" in row:
        text += f", {row['speedup_time']:.0f}x time / {row['speedup_compute']:.0f}x compute vs reference"
    if "concurrent" in row:
        c = row["concurrent"]
        text += f", {c['keep_up']}/{c['n']} concurrent streams keep up"
    return text


def run_bench(plan: Plan, json_path: Path | None = None, markdown_path: Path | None = None,
              plot_path: Path | None = None) -> int:
    """`dpt-live bench`: run the plan, print the progress and the markdown tables, write the asked
    files. 1 when a configuration failed."""
    from bench.report import markdown, write_json, write_markdown, write_plot

    result = run_matrix(plan, progress=lambda line: print(line, flush=True))
    print()
    print(markdown(result))
    if json_path:
        write_json(result, json_path)
    if markdown_path:
        write_markdown(result, markdown_path)
    if plot_path:
        write_plot(result, plot_path)
    return 1 if result["failed"] else 0
