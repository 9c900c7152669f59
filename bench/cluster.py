"""`dpt-live cluster-bench`: the figures of docs/SCALING.md, measured on a real Ray.

For each stream count: the same real-time streams (the demo speech) once on the in-process
batching scheduler and once on Ray Serve replicas (server/cluster.py), each row with the streams
that kept up and stayed within the latency budget, their worst frame latency and the request round
trip (in-process: queue + call; through Ray: front end to replica and back). Then a kill drill: two
streams, one replica killed (``ray.kill``) a third of the way in; it reports the worst frame
latency of the streams (the gap the kill cost), the steps shed, the failed attempts and how long
Ray Serve took to have every replica healthy again."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np

from bench.matrix import run_concurrent
from diffposetalk.model import Guidance
from diffposetalk.model_dir import load_model_dir
from diffposetalk.units import SAMPLE_RATE
from streaming.session import StreamConfig
from streaming.setup import pick_sampler


def demo_audio(path: Path, seconds: float) -> np.ndarray:
    import soundfile as sf
    import soxr

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE)
    n = int(seconds * SAMPLE_RATE)
    return np.resize(audio, n).astype(np.float32)  # looped to the length asked for


def summary(row: dict) -> dict:
    per = row["per_session"]
    return {"streams": row["n"], "keep_up": row["keep_up"], "within_budget": row["within_budget"],
            "worst_latency_ms_max": max(p["worst_latency_ms"] for p in per),
            "worst_latency_ms_median": float(np.median([p["worst_latency_ms"] for p in per])),
            "shed_steps": sum(p["shed_steps"] for p in per)}


def run_cluster_bench(model: Path, audio_path: Path, replicas: int, streams: list[int], seconds: float,
                      backend: str = "onnxruntime", budget_ms: float = 250.0, kill: bool = True,
                      replica_cpus: float = 1.0, progress=print) -> dict:
    from server.cluster import ClusterOptions, start_remote_scheduler
    from streaming.factory import make_scheduler

    loaded = load_model_dir(model)
    sampler = pick_sampler("ddim", None, loaded)
    config = StreamConfig()
    audio = demo_audio(audio_path, seconds)
    guidance = Guidance()
    out = {"model": str(model), "backend": backend, "replicas": replicas, "seconds": seconds,
           "latency_budget_ms": budget_ms, "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in os.getloadavg()],
           "rows": []}
    t = time.perf_counter()
    cl, remote = start_remote_scheduler(ClusterOptions(replicas=replicas, replica_cpus=replica_cpus), loaded, backend,
                                        scheduler_options={"latency_budget_ms": budget_ms},
                                        warm={"window_samples": config.spec().window_samples, "sampler": sampler})
    out["cluster_start_s"] = round(time.perf_counter() - t, 1)
    progress(f"cluster: {cl.describe()} up in {out['cluster_start_s']} s ({remote.networks.describe()})")
    rows = {}
    try:  # the Ray rows first: an in-process runtime used before in this process slowed the front end
        for n in streams:
            before = {rid: dict(r["requests"]) for rid, r in remote.stats()["replicas"].items()}
            row_ray = run_concurrent(loaded, sampler, guidance, None, config, audio, (backend, "fp32"), 1, n, True,
                                     budget_ms, scheduler=remote)
            stats = remote.stats()
            used = [rid for rid, r in stats["replicas"].items() if r["requests"] != before.get(rid)]
            rows[n] = {"streams": n, "ray": summary(row_ray) | {
                "replicas_used": len(used), "step_ms_by_replica": {rid: stats["replicas"][rid]["step_ms"] for rid in used}}}
            progress(f"{n:3d} streams on Ray: {ray_line(rows[n]['ray'], n)}")
        if kill:
            out["kill"] = kill_drill(cl, remote, loaded, sampler, guidance, config, audio, backend, budget_ms)
            k = out["kill"]
            progress(f"kill drill (2 streams, 1 of {replicas} replicas killed at {k['killed_at_s']} s): worst frame "
                     f"latency {k['worst_latency_ms']} ms (without a kill {k['baseline_worst_latency_ms']} ms), "
                     f"shed steps {k['shed_steps']}, failed attempts {k['faults']}, every replica healthy again "
                     f"after {k['recovery_s']} s")
    finally:
        remote.close()
        cl.close()
    for n in streams:
        local = make_scheduler(loaded, backend, latency_budget_ms=budget_ms)
        try:
            row_local = run_concurrent(loaded, sampler, guidance, None, config, audio, (backend, "fp32"), 1, n,
                                       True, budget_ms, scheduler=local)
            rows[n]["in_process"] = summary(row_local) | {"request_ms": local.stats()["request_ms"]}
        finally:
            local.close()
        progress(f"{n:3d} streams in process: {local_line(rows[n]['in_process'], n)}")
    out["rows"] = [rows[n] for n in streams]
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def local_line(a: dict, n: int) -> str:
    rq = a["request_ms"] or {}
    return (f"{a['within_budget']}/{n} within budget, worst latency median {a['worst_latency_ms_median']:.0f} ms, "
            f"request p50 {rq.get('p50', 0):.1f} ms, shed {a['shed_steps']}")


def ray_line(b: dict, n: int) -> str:
    steps = [p.get("p50") for r in b["step_ms_by_replica"].values() for p in r.values() if p]
    return (f"{b['within_budget']}/{n} within budget, worst latency median {b['worst_latency_ms_median']:.0f} ms, "
            f"request p50 {np.median(steps) if steps else float('nan'):.1f} ms on {b['replicas_used']} replica(s), "
            f"shed {b['shed_steps']}")


def kill_drill(cl, remote, loaded, sampler, guidance, config, audio, backend: str, budget_ms: float) -> dict:
    import ray

    seconds = len(audio) / SAMPLE_RATE
    base = run_concurrent(loaded, sampler, guidance, None, config, audio, (backend, "fp32"), 1, 2, True, budget_ms,
                          scheduler=remote)
    faults_before = dict(remote.stats()["faults"])
    want = cl.health()["replicas"]
    names = set(cl.replica_actors())
    victim = sorted(names)[0]
    result: dict = {}

    def killer():
        time.sleep(seconds / 3)
        result["at"] = time.perf_counter()
        ray.kill(ray.get_actor(victim, namespace="serve"))
        while time.perf_counter() - result["at"] < 120:
            h = cl.poll()
            now = set(cl.replica_actors())
            if h["healthy"] >= want and victim not in now and now - names:  # its replacement runs
                result["recovered"] = time.perf_counter() - result["at"]
                return
            time.sleep(0.1)

    thread = threading.Thread(target=killer)
    thread.start()
    row = run_concurrent(loaded, sampler, guidance, None, config, audio, (backend, "fp32"), 1, 2, True, budget_ms,
                         scheduler=remote)
    thread.join()
    faults = {k: v - faults_before.get(k, 0) for k, v in remote.stats()["faults"].items() if v - faults_before.get(k, 0)}
    return {"killed_at_s": round(seconds / 3, 1), "worst_latency_ms": max(p["worst_latency_ms"] for p in row["per_session"]),
            "baseline_worst_latency_ms": max(p["worst_latency_ms"] for p in base["per_session"]),
            "shed_steps": sum(p["shed_steps"] for p in row["per_session"]), "faults": faults,
            "recovery_s": round(result.get("recovered", float("nan")), 1)}


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
