"""Fidelity of a candidate engine backend (e.g. int8 graphs) against a reference one: the same
audio streamed through both, compared by the lip metric of docs/TRAINING.md."""

from __future__ import annotations

import numpy as np

from diffposetalk.metrics import lip_error, pearson


def lip_fidelity(loaded, reference, candidate, audio: np.ndarray, style: np.ndarray | None = None,
                 config=None, sampler=None) -> dict:
    """Stream ``audio`` through two engine backends (engines.networks.Networks) with the same
    seed, sampler and style and compare the FLAME output of ``candidate`` with ``reference``:
    lip_error (training/evaluate.py's definition: RMS of jaw opening + exp[0:5] in normalised
    units), Pearson r of the jaw opening, and the largest difference of the motion vectors."""
    from diffposetalk.model import Guidance
    from streaming.factory import torch_session
    from streaming.runner import stream_array
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler

    config = config or StreamConfig()
    sampler = sampler or pick_sampler("ddim", None, loaded)
    stats = {k: v.detach().cpu().numpy() for k, v in loaded.stats.items()}
    runs = []
    for networks in (reference, candidate):
        session = torch_session(loaded, sampler, Guidance(), config, style, networks=networks)
        frames = stream_array(session, audio, 320)
        runs.append({"exp": np.stack([f.exp for f in frames]), "pose": np.stack([f.pose for f in frames]),
                     "motion": np.stack([f.motion for f in frames])})
    ref, cand = runs
    return {"frames": len(ref["exp"]),
            "lip_error": lip_error(cand, ref, stats),
            "jaw_corr": pearson(cand["pose"][:, 3], ref["pose"][:, 3]),
            "max_abs_motion_diff": float(np.max(np.abs(cand["motion"] - ref["motion"])))}
