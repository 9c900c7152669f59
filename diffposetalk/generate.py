"""Offline generation over a whole clip, window by window exactly as the reference demo does.

Whole-clip audio normalisation; features extracted once over the (padded) clip; windows of
n_motions frames with stride n_motions, each continued from the last n_prev frames (motion and
audio features) of the previous one; the same x_T for every window; the last window padded with
indicator 0 on its padded frames, which are then dropped."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diffposetalk.audio_encoder import normalize_clip
from diffposetalk.model import DiffPoseTalk, Guidance, WindowCondition, motion_to_coef
from diffposetalk.sampler import NoiseSource, RandomNoise, Sampler

SAMPLE_RATE = 16000


@dataclass
class WindowPlan:
    n_frames: int  # frames in the output
    n_windows: int
    n_pad_samples: int  # audio samples appended (may be <= 0: nothing appended)
    n_pad_frames: int  # padded frames of the last window (indicator 0, dropped)


def plan_windows(n_samples: int, n_motions: int, fps: int) -> WindowPlan:
    unit = SAMPLE_RATE / fps
    clip_len = int(n_samples / SAMPLE_RATE * fps)
    n_windows = 1 if clip_len <= n_motions else math.ceil(clip_len / n_motions)
    n_pad_samples = round(unit * n_motions) * n_windows - n_samples
    n_pad_frames = math.ceil(n_pad_samples / unit)
    n_frames = n_windows * n_motions - max(n_pad_frames, 0)
    return WindowPlan(n_frames, n_windows, n_pad_samples, n_pad_frames)


@torch.no_grad()
def generate_motion(model: DiffPoseTalk, audio: np.ndarray | torch.Tensor, shape: torch.Tensor,
                    style: torch.Tensor | None, sampler: Sampler, guidance: Guidance,
                    noise: NoiseSource | None = None, repeats: int = 1, progress=None) -> torch.Tensor:
    """audio (S,) 16 kHz raw; shape (shape_dim,) normalised; style (d_style,) or None.
    Returns normalised motion (repeats, T, D)."""
    cfg, dev = model.cfg, model.device
    audio = torch.as_tensor(audio, dtype=torch.float32, device=dev)
    if audio.ndim != 1:
        raise ValueError("audio must be 1-D")
    audio = normalize_clip(audio)
    plan = plan_windows(audio.shape[0], cfg.n_motions, cfg.fps)
    if plan.n_pad_samples > 0:
        value = 0.0 if cfg.pad_mode == "zero" else float(audio[-1])
        audio = F.pad(audio, (0, plan.n_pad_samples), value=value)
    feats = model.audio_features(audio.unsqueeze(0), cfg.n_motions * plan.n_windows)

    noise = noise or RandomNoise(device=dev)
    shape_b = shape.to(dev).unsqueeze(0).expand(repeats, -1)
    style_b = None if style is None else style.to(dev).unsqueeze(0).expand(repeats, -1)
    x_T = noise.initial((repeats, cfg.n_motions, cfg.motion_dim))
    prev_motion = prev_audio = None
    out = []
    for w in range(plan.n_windows):
        s, e = w * cfg.n_motions, (w + 1) * cfg.n_motions
        indicator = None
        if cfg.use_indicator:
            indicator = torch.ones(repeats, cfg.n_motions, device=dev)
            if w == plan.n_windows - 1 and plan.n_pad_frames > 0:
                indicator[:, -plan.n_pad_frames:] = 0
        audio_in = feats[:, s:e].expand(repeats, -1, -1)
        cond = WindowCondition(audio_in, shape_b, style_b, prev_motion, prev_audio, indicator)
        motion = sampler.sample(model, model.guided_denoiser(cond, guidance), x_T, noise, window=w)
        # the last n_prev frames generated so far (a window shorter than n_prev, e.g. a distilled
        # student's, keeps the tail of the previous condition, as the streaming session does)
        if prev_motion is None:  # first window: the model's learned start condition
            prev_motion, prev_audio = model._prev(cond, repeats)
        P = cfg.n_prev_motions
        prev_motion = torch.cat([prev_motion, motion], dim=1)[:, -P:].clone()
        prev_audio = torch.cat([prev_audio, audio_in], dim=1)[:, -P:]
        if w == plan.n_windows - 1 and plan.n_pad_frames > 0:
            motion = motion[:, : -plan.n_pad_frames]
        out.append(motion)
        if progress is not None:
            progress(w + 1, plan.n_windows)
    return torch.cat(out, dim=1)


def motion_to_arrays(motion: torch.Tensor, stats: dict[str, torch.Tensor], head_pose: bool,
                     shape_raw: torch.Tensor) -> dict[str, np.ndarray]:
    """(R, T, D) normalised -> {'exp' (R,T,50), 'pose' (R,T,6), 'shape' (R,T,100)} raw FLAME."""
    coef = motion_to_coef(motion, stats, head_pose)
    R, T = motion.shape[:2]
    coef["shape"] = shape_raw.to(motion.device)[None, None].expand(R, T, -1)
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in coef.items()}
