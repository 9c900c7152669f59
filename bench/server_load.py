"""`dpt-live serve-bench`: measure the server overhead per frame (pipeline emit -> frame written
to a viewer's socket, the dpt_server_overhead_seconds histogram) with 1, 10, ... viewers.

The server runs as its own process (`dpt-live serve`, the real command) so that the viewers'
receive work does not share its event loop; this process connects the viewers and reads
/metrics before and after each measurement window (quantiles from the bucket differences).
The command's options are registered in dpt_live/commands/serve.py."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from server.metrics import quantile_from_cumulative  # noqa: F401  (also the bench's API)

# --- Prometheus text ------------------------------------------------------------------------------

def parse_histogram(text: str, name: str) -> tuple[list[float], list[int], float, int]:
    """(bounds, cumulative counts incl. +Inf, sum, count) of one histogram in /metrics text."""
    bounds, counts, total_sum, total = [], [], 0.0, 0
    for line in text.splitlines():
        m = re.match(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', line)
        if m:
            bounds.append(float("inf") if m.group(1) == "+Inf" else float(m.group(1)))
            counts.append(int(float(m.group(2))))
        elif line.startswith(f"{name}_sum "):
            total_sum = float(line.split()[1])
        elif line.startswith(f"{name}_count "):
            total = int(float(line.split()[1]))
    if not bounds:
        raise ValueError(f"histogram {name} not in the metrics")
    return bounds, counts, total_sum, total


def histogram_delta(before, after) -> tuple[list[float], list[int], float, int]:
    bounds = after[0]
    cum = [a - b for a, b in zip(after[1], before[1])]
    return bounds, cum, after[2] - before[2], after[3] - before[3]


def counter(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def loop_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of the server's main thread — the one running the event loop and so
    every frame write — from /proc (Linux; None elsewhere). Unlike the wall-clock histogram it
    does not grow when other processes compete for the cores."""
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the run -------------------------------------------------------------------------------------

def start_server(args, own_audio: bool = True) -> tuple[subprocess.Popen, str, str]:
    own = ["--audio", str(args.audio), "--loop"] if own_audio else []
    exe = [sys.executable, "-m", "dpt_live.cli", "serve", "--model", str(args.model), *own,
           "--port", "0", "--token", "bench", "--backend", args.backend,
           "--max-viewers", "1000", *args.serve_arg]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(exe, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"viewer: (http://[^/]+)/", line)
        if m:
            return proc, m.group(1), "bench"
    proc.kill()
    raise UserError("the server did not start:\n" + "".join(lines[-20:]))


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def metrics_text(base: str) -> str:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        return r.read().decode()


def write_rows(path: Path | None, rows: list[dict]) -> int:
    """--json: the rows, when asked for; the command's exit status."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


async def _slow_viewer(url: str, fps: float, stop: asyncio.Event, measuring: asyncio.Event, out: dict) -> None:
    """Reads one message every 1/fps s; while ``measuring``, records each frame's lag behind live
    (this machine's clock minus the frame's emit time: the server runs here too) and its drops."""
    from websockets.asyncio.client import connect

    from server.protocol import WireFrame, decode_server_message

    # max_queue=1: websockets' default read-ahead (16 messages) would add 16/fps s the server cannot see
    async with connect(url, max_size=None, max_queue=1) as ws:
        await ws.recv()  # hello
        loop = asyncio.get_running_loop()
        t_next = loop.time()
        while not stop.is_set():
            t_next += 1 / fps
            await asyncio.sleep(max(0.0, t_next - loop.time()))
            try:
                msg = decode_server_message(await asyncio.wait_for(ws.recv(), 5))
            except TimeoutError:
                continue
            if isinstance(msg, WireFrame) and measuring.is_set():
                out["lags"].append(time.time() - msg.emit_time)
                out["frames"] += 1
                out["dropped"] += msg.dropped


async def _viewers(base: str, token: str, n: int, mode: str, seconds: float, warmup: float, fetch, pid: int,
                   slow: int = 0, slow_fps: float = 5.0):
    from websockets.asyncio.client import connect

    url = base.replace("http://", "ws://") + f"/ws?token={token}&mode={mode}"
    counts = [0] * n
    dropped = [0] * n
    stop = asyncio.Event()
    measuring = asyncio.Event()
    slow_out = {"lags": [], "frames": 0, "dropped": 0}

    async def one(i: int) -> None:
        async with connect(url, max_size=None) as ws:
            await ws.recv()  # hello
            while not stop.is_set():
                try:
                    msg = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                if isinstance(msg, bytes) or '"frame"' in msg[:20]:
                    counts[i] += 1
                elif '"dropped"' in msg[:20]:
                    dropped[i] += json.loads(msg)["count"]

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    tasks += [asyncio.create_task(_slow_viewer(url, slow_fps, stop, measuring, slow_out)) for _ in range(slow)]
    await asyncio.sleep(warmup)
    measuring.set()
    before = await asyncio.to_thread(fetch)
    cpu0 = loop_cpu_seconds(pid)
    c0 = list(counts)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    after = await asyncio.to_thread(fetch)
    cpu1 = loop_cpu_seconds(pid)
    elapsed = time.monotonic() - t0
    c1 = list(counts)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return before, after, elapsed, [b - a for a, b in zip(c0, c1)], sum(dropped), cpu, slow_out


async def _upstream_clients(base: str, token: str, n: int, audio, seconds: float, budget_ms: float,
                            rate: int = 16000) -> dict:
    """``n`` clients, each its own session, stream ``audio`` (16 kHz) upstream in real time in 20 ms
    blocks at ``rate`` (48000: what a browser page's AudioWorklet sends; the server resamples),
    started spread over 80 ms as independent speakers, and read their frames. A frame's latency
    is its arrival here minus the time its last audio block was sent (one clock: the server runs
    on this machine), so it counts the upstream socket, the server and the frame's way back."""
    from websockets.asyncio.client import connect

    from diffposetalk.audio_io import resample
    from diffposetalk.units import SAMPLE_RATE
    from server.protocol import decode_server_message, dumps

    block = rate // 50
    pcm = audio[:int(seconds * SAMPLE_RATE)]
    pcm = (resample(pcm, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else pcm).astype("<f4")
    t_start = time.time() + 1.0
    results: list[dict] = [{} for _ in range(n)]

    async def one(k: int) -> None:
        url = base.replace("http://", "ws://") + f"/ws?token={token}&session=upstream-{k}"
        async with connect(url, max_size=2 ** 20, compression=None) as ws:
            await ws.recv()  # hello
            await ws.send(dumps({"type": "audio_start", "rate": rate, "channels": 1, "format": "f32le"}))
            t0 = t_start + 0.08 * k / n
            lat: list[float] = []
            degraded = 0

            async def read() -> None:
                nonlocal degraded
                async for msg in ws:
                    frame = decode_server_message(msg)
                    if not isinstance(frame, dict):
                        degraded += bool(frame.degraded)
                        lat.append(time.time() - (t0 + frame.audio_time + 0.02))  # + half a frame: its end
            reader = asyncio.create_task(read())
            for i in range(0, len(pcm), block):
                await asyncio.sleep(max(0.0, t0 + (i + block) / rate - time.time()))
                await ws.send(pcm[i:i + block].tobytes())
            await ws.send(dumps({"type": "audio_end"}))
            await asyncio.sleep(1.0)  # the last steps' frames
            reader.cancel()
            results[k] = {"frames": len(lat), "degraded": degraded,
                          "worst_ms": round(max(lat) * 1000, 1) if lat else None, "lat": lat}

    await asyncio.gather(*(one(k) for k in range(n)))
    lats = np.array([x for r in results for x in r["lat"]]) * 1000
    worst = [r["worst_ms"] for r in results]
    return {"streams": n, "seconds": seconds, "rate": rate, "frames": int(lats.size),
            "latency_ms": {q: round(float(np.percentile(lats, p)), 1) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}
            | {"max": round(float(lats.max()), 1)},
            "degraded_frames": sum(r["degraded"] for r in results),
            "within_budget": sum(1 for r in results if r["worst_ms"] is not None and r["worst_ms"] <= budget_ms
                                 and not r["degraded"]),
            "latency_budget_ms": budget_ms, "worst_ms_per_stream": worst}


def run_upstream_bench(args) -> int:
    """`dpt-live serve-bench --upstream N[,M...]`: for each count, that many real-time upstream
    clients against one `dpt-live serve` (no own source); prints a line per count."""
    from bench.common import load_clip

    try:
        ns = [int(x) for x in args.upstream.split(",") if x.strip()]
    except ValueError as exc:
        raise UserError(f"--upstream wants comma-separated stream counts, got {args.upstream!r}") from exc
    audio, _ = load_clip(args.audio, args.seconds, 0)
    args.serve_arg = ["--max-sessions", str(max(ns) + 1), *args.serve_arg]
    proc, base, token = start_server(args, own_audio=False)
    rows = []
    try:
        for n in ns:
            before = metrics_text(base)
            row = asyncio.run(_upstream_clients(base, token, n, audio, args.seconds, args.latency_budget_ms,
                                                args.upstream_rate))
            name = "dpt_event_loop_lag_seconds"  # the server's loop, where the upstream audio is fed
            bounds, cum, _, c = histogram_delta(parse_histogram(before, name), parse_histogram(metrics_text(base), name))
            row["event_loop_lag_ms"] = {"p50": _ms(quantile_from_cumulative(bounds, cum, 0.5)),
                                        "p95": _ms(quantile_from_cumulative(bounds, cum, 0.95)), "count": c}
            rows.append(row)
            lat = row["latency_ms"]
            print(f"{n:>3} upstream streams at {args.upstream_rate} Hz: frame latency p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']} "
                  f"max {lat['max']} ms; {row['within_budget']} of {n} streams with every frame ≤ "
                  f"{args.latency_budget_ms:g} ms and none degraded; {row['degraded_frames']} of {row['frames']} "
                  f"frames degraded (shed); the server's event loop late by p50 {row['event_loop_lag_ms']['p50']} / "
                  f"p95 {row['event_loop_lag_ms']['p95']} ms", flush=True)
            time.sleep(2.0)  # the sessions' last steps, before the next count
    finally:
        stop_server(proc)
    return write_rows(args.json, rows)


def run_serve_bench(args) -> int:
    """`dpt-live serve-bench` (its options: dpt_live/commands/serve.py): a server with the demo
    audio looping, then for each viewer count a measurement window; prints a line per count and
    writes the rows with --json. With ``--upstream``: run_upstream_bench."""
    if getattr(args, "upstream", None):
        return run_upstream_bench(args)
    try:
        ns = [int(x) for x in args.viewers.split(",") if x.strip()]
    except ValueError as exc:
        raise UserError(f"--viewers wants comma-separated integers, got {args.viewers!r}") from exc
    proc, base, token = start_server(args)
    rows = []
    try:
        fetch = functools.partial(metrics_text, base)
        for n in ns:
            before, after, elapsed, received, dropped, cpu, slow_out = asyncio.run(
                _viewers(base, token, n, args.mode, args.seconds, args.warmup, fetch, proc.pid,
                         args.slow_viewers, args.slow_fps))
            row = {"viewers": n, "seconds": round(elapsed, 2), "mode": args.mode,
                   "frames_per_viewer_per_s": round(sum(received) / max(1, n) / elapsed, 2),
                   "dropped": dropped}
            for key, name in (("overhead_ms", "dpt_server_overhead_seconds"),
                              ("frame_latency_ms", "dpt_frame_latency_seconds"),
                              ("step_ms", "dpt_step_seconds")):
                bounds, cum, s, c = histogram_delta(parse_histogram(before, name), parse_histogram(after, name))
                row[key] = {"p50": _ms(quantile_from_cumulative(bounds, cum, 0.5)),
                            "p95": _ms(quantile_from_cumulative(bounds, cum, 0.95)),
                            "mean": _ms(s / c) if c else None, "count": c}
            writes = row["overhead_ms"]["count"]
            row["loop_cpu_us_per_write"] = round(cpu / writes * 1e6, 1) if cpu is not None and writes else None
            row["loop_cpu_share"] = round(cpu / elapsed, 4) if cpu is not None else None
            if args.slow_viewers:
                lags = sorted(slow_out["lags"])
                row["slow_viewers"] = {
                    "count": args.slow_viewers, "reads_per_s": args.slow_fps,
                    "frames_per_viewer_per_s": round(slow_out["frames"] / args.slow_viewers / elapsed, 2),
                    "dropped": slow_out["dropped"],
                    "lag_s": {"p50": round(lags[len(lags) // 2], 3), "max": round(lags[-1], 3)} if lags else None}
            rows.append(row)
            print(f"{n:>3} viewers: overhead p50 {row['overhead_ms']['p50']} ms, p95 {row['overhead_ms']['p95']} ms, "
                  f"mean {row['overhead_ms']['mean']} ms ({row['overhead_ms']['count']} frame writes); "
                  f"frame latency p50/p95 {row['frame_latency_ms']['p50']}/{row['frame_latency_ms']['p95']} ms; "
                  f"step p50 {row['step_ms']['p50']} ms; {row['frames_per_viewer_per_s']} frames/s per viewer; "
                  f"dropped {dropped}; event-loop CPU {row['loop_cpu_us_per_write']} us per frame write "
                  f"({row['loop_cpu_share']} of a core)", flush=True)
            if args.slow_viewers:
                sv = row["slow_viewers"]
                print(f"     + {sv['count']} slow viewers reading {sv['reads_per_s']:g} messages/s: lag behind live "
                      f"{sv['lag_s']} s, {sv['frames_per_viewer_per_s']} frames/s each, dropped {sv['dropped']}",
                      flush=True)
    finally:
        stop_server(proc)
    return write_rows(args.json, rows)


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 4)
