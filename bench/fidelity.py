"""Fidelity measurements of the benchmark family:

- :func:`lip_fidelity`: a candidate engine backend (e.g. int8 graphs) against a reference one,
  the same audio streamed through both, compared by the lip metric of docs/TRAINING.md;
- :func:`stream_vs_offline`: a timed stream against offline `animate` generation on the same
  audio (same sampler, seed, style and x_T), and the smoothness of its step seams."""

from __future__ import annotations

import numpy as np
import torch

from bench.common import BLOCK
from diffposetalk.metrics import lip_error, pearson


def lip_fidelity(loaded, reference, candidate, audio: np.ndarray, style: np.ndarray | None = None,
                 config=None, sampler=None) -> dict:
    """Stream ``audio`` through two engine backends (engines.networks.Networks) with the same
    seed, sampler and style and compare the FLAME output of ``candidate`` with ``reference``:
    lip_error (training/evaluate.py's definition: RMS of jaw opening + exp[0:5] in normalised
    units), Pearson r of the jaw opening, and the largest difference of the motion vectors."""
    from diffposetalk.model import Guidance
    from streaming.factory import open_session
    from streaming.runner import stream_array
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler

    config = config or StreamConfig()
    sampler = sampler or pick_sampler("ddim", None, loaded)
    stats = {k: v.detach().cpu().numpy() for k, v in loaded.stats.items()}
    runs = []
    for networks in (reference, candidate):
        session = open_session(loaded, sampler, Guidance(), config, style, networks=networks)
        frames = stream_array(session, audio, BLOCK)
        runs.append({"exp": np.stack([f.exp for f in frames]), "pose": np.stack([f.pose for f in frames]),
                     "motion": np.stack([f.motion for f in frames])})
    ref, cand = runs
    return {"frames": len(ref["exp"]),
            "lip_error": lip_error(cand, ref, stats),
            "jaw_corr": pearson(cand["pose"][:, 3], ref["pose"][:, 3]),
            "max_abs_motion_diff": float(np.max(np.abs(cand["motion"] - ref["motion"])))}


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


def offline_arrays(loaded, sampler, guidance, style, audio: np.ndarray, seed: int) -> dict:
    """exp, pose, ... of offline `animate` generation (mean face) on ``audio``."""
    from diffposetalk.generate import generate_motion, motion_to_arrays
    from diffposetalk.sampler import RandomNoise

    shape = (torch.zeros(100) - loaded.stats["shape_mean"].cpu()) / loaded.stats["shape_std"].cpu()
    motion = generate_motion(loaded.model, audio, shape, None if style is None else torch.as_tensor(style),
                             sampler, guidance, RandomNoise(seed))
    arrays = motion_to_arrays(motion, loaded.stats, loaded.config.head_pose, torch.zeros(100))
    return {k: v[0] for k, v in arrays.items()}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-frame cosine similarity over the frames both have."""
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def seams(recorder, hop: int) -> dict | None:
    """Frame-to-frame change across step boundaries against inside steps (streaming/metrics.py)."""
    from streaming.metrics import seam_smoothness

    if not recorder.frames:
        return None
    return seam_smoothness(np.stack([f.motion for f in recorder.frames]), hop)


def stream_vs_offline(recorder, streamed_features: np.ndarray, offline: tuple[dict, np.ndarray]) -> dict:
    """Jaw and expression correlation / RMSE of the streamed frames against offline generation
    (streaming/metrics.py: fidelity), and the cosine of the streamed audio features to the
    offline whole-clip ones. offline: (offline_arrays, offline_features)."""
    from streaming.metrics import fidelity

    out = fidelity(recorder.arrays(np.zeros(100)), offline[0])
    out["feature_cos"] = cosine(streamed_features, offline[1])
    return out
