"""Numbers for reports and benchmarks: timing percentiles, real-time latency (measured or replayed),
seam smoothness and streaming-vs-offline fidelity."""

from __future__ import annotations

import numpy as np

from diffposetalk.metrics import pearson
from diffposetalk.units import FRAME_SAMPLES, SAMPLE_RATE
from streaming.windowing import WindowSpec


def percentiles_ms(seconds) -> dict | None:
    x = np.asarray(seconds, dtype=np.float64) * 1000
    if x.size == 0:
        return None
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2),
            "max": round(float(x.max()), 2), "mean": round(float(x.mean()), 2)}


def replay_latency(compute_s, spec: WindowSpec, n_frames: int, block_samples: int = 320) -> np.ndarray:
    """Per-frame latency if audio had arrived in real time (blocks of ``block_samples``) and each
    step took the measured compute time, queueing behind the previous step when compute is slower
    than the hop. Lets a benchmark report real-time latency without sleeping through the audio."""
    def arrived(sample: int) -> float:  # wall time at which the block holding sample-1 arrived
        return -(-sample // block_samples) * block_samples / SAMPLE_RATE

    latencies = np.zeros(n_frames)
    done = 0.0
    for k, c in enumerate(compute_s):
        first = spec.first_frame(k)
        if first >= n_frames:
            break
        ready = arrived(min(spec.audio_end(k), n_frames * FRAME_SAMPLES))
        done = max(ready, done) + c
        for j in range(first, min(first + spec.hop, n_frames)):
            latencies[j] = done - arrived((j + 1) * FRAME_SAMPLES)
    return latencies


def seam_smoothness(motion: np.ndarray, hop: int) -> dict:
    """Mean L2 frame-to-frame change across step boundaries (seams) vs inside steps. With a hop of
    one frame every change is a seam; 'inside' is then None."""
    d = np.linalg.norm(np.diff(np.asarray(motion, dtype=np.float64), axis=0), axis=1)
    idx = np.arange(1, len(motion))  # d[i-1] is the change into frame i
    seam = d[idx % hop == 0]
    inside = d[idx % hop != 0]
    out = {"seam": float(seam.mean()) if seam.size else None,
           "inside": float(inside.mean()) if inside.size else None,
           "all": float(d.mean()) if d.size else None}
    out["ratio"] = out["seam"] / out["inside"] if out["seam"] is not None and out["inside"] else None
    return out


def fidelity(stream: dict, offline: dict) -> dict:
    """Jaw opening (pose[:, 3]) and expression (exp) of a streamed run against offline animate on
    the same audio: Pearson correlation (per-coefficient means removed) and RMS error."""
    n = min(len(stream["exp"]), len(offline["exp"]))
    jaw_s, jaw_o = stream["pose"][:n, 3], offline["pose"][:n, 3]
    exp_s, exp_o = stream["exp"][:n], offline["exp"][:n]
    return {"frames": n,
            "jaw_corr": pearson(jaw_s, jaw_o), "jaw_rmse": float(np.sqrt(np.mean((jaw_s - jaw_o) ** 2))),
            "exp_corr": pearson(exp_s, exp_o, axis=0), "exp_rmse": float(np.sqrt(np.mean((exp_s - exp_o) ** 2)))}
