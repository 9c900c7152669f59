"""DiffPoseTalk: audio encoder + denoiser + style encoder + schedule, and the guided denoiser
(classifier-free guidance over a network pass) every sampler runs. Parameter names match the reference's state-dict layout so imports are a
near-identity key map."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from diffposetalk.audio_encoder import AudioEncoder
from diffposetalk.config import ModelConfig
from diffposetalk.denoiser import DenoisingNetwork
from diffposetalk.diffusion import DiffusionSchedule
from diffposetalk.stream_encoder import StreamEncoder, StreamEncoderConfig
from diffposetalk.style_encoder import StyleEncoder


@dataclass
class Guidance:
    """Classifier-free guidance settings. ``conditions`` are guided in the order audio, style."""

    scales: dict[str, float] = field(default_factory=lambda: {"audio": 1.15, "style": 3.0})
    conditions: tuple[str, ...] | None = None  # None: the model's guiding conditions
    mode: str | None = None  # None: the model's cfg_mode
    dynamic_threshold: tuple[float, float, float] | None = None  # (ratio, min, max)


@dataclass
class WindowCondition:
    """Everything a denoiser window is conditioned on (batch N)."""

    audio_feat: torch.Tensor  # (N, L, F) projected audio features
    shape: torch.Tensor  # (N, shape_dim) normalised shape
    style: torch.Tensor | None = None  # (N, d_style) or None (null style)
    prev_motion: torch.Tensor | None = None  # (N, n_prev, D) or None (first window)
    prev_audio: torch.Tensor | None = None  # (N, n_prev, F)
    indicator: torch.Tensor | None = None  # (N, L) 1 = real frame


class DiffPoseTalk(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, F = cfg.motion_dim, cfg.feature_dim
        self.audio_encoder = AudioEncoder(cfg.hubert, cfg.fps)
        self.audio_feature_map = nn.Linear(cfg.audio_hidden, F)
        self.start_audio_feat = nn.Parameter(torch.randn(1, cfg.n_prev_motions, F))
        self.start_motion_feat = nn.Parameter(torch.randn(1, cfg.n_prev_motions, D))
        self.denoising_net = DenoisingNetwork(cfg)
        self.diffusion_sched = DiffusionSchedule(cfg.n_diff_steps, cfg.diff_schedule)
        if "style" in cfg.guiding_conditions:
            self.null_style_feat = nn.Parameter(torch.randn(1, 1, cfg.d_style))
        if "audio" in cfg.guiding_conditions:
            self.null_audio_feat = nn.Parameter(torch.randn(1, 1, F))
        self.style_encoder = (StyleEncoder(cfg.style_encoder, D)
                              if cfg.style_encoder is not None and cfg.use_style else None)
        # the causal audio encoder streaming uses when present (its weights: "stream_encoder.*")
        self.stream_encoder = (StreamEncoder(StreamEncoderConfig.from_dict(cfg.stream_encoder))
                               if cfg.stream_encoder is not None else None)

    @property
    def device(self) -> torch.device:
        return self.start_motion_feat.device

    # --- audio ---------------------------------------------------------------------------------
    def audio_features(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Normalised audio (N, S) -> (N, n_frames, feature_dim)."""
        return self.audio_feature_map(self.audio_encoder(audio, n_frames))

    # --- the network with CFG ------------------------------------------------------------------
    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: WindowCondition,
                audio_feat: torch.Tensor | None = None, style: torch.Tensor | None = None,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        """One plain network pass (no CFG; ``guidance`` (N, 2) is a student's scale input).
        Returns (N, n_prev + L, D)."""
        n = x_t.shape[0]
        audio_feat = cond.audio_feat if audio_feat is None else audio_feat
        person = self._person(cond.shape, cond.style if style is None else style)
        prev_motion, prev_audio = self._prev(cond, n)
        return self.denoising_net(x_t, audio_feat, person, prev_motion, prev_audio, t, cond.indicator, guidance)

    def _person(self, shape: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        shape = shape.unsqueeze(1) if shape.ndim == 2 else shape
        if not self.cfg.use_style:
            return shape
        if style is None:
            style = self.null_style_feat.expand(shape.shape[0], -1, -1)
        style = style.unsqueeze(1) if style.ndim == 2 else style
        return torch.cat([shape, style], dim=-1)

    def _prev(self, cond: WindowCondition, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        prev_motion = cond.prev_motion if cond.prev_motion is not None else self.start_motion_feat.expand(n, -1, -1)
        prev_audio = cond.prev_audio if cond.prev_audio is not None else self.start_audio_feat.expand(n, -1, -1)
        return prev_motion, prev_audio

    def guidance_entries(self, cond: WindowCondition, guidance: Guidance):
        """The (audio, person) inputs of each guided pass and their scales, in reference order:
        [unconditional, +audio, +style]. Returns (audio_in, person_in, scales, mode)."""
        cfg = self.cfg
        mode = guidance.mode or cfg.cfg_mode
        conds = list(cfg.guiding_conditions if guidance.conditions is None else guidance.conditions)
        conds = sorted([c for c in conds if c in ("audio", "style")], key=["audio", "style"].index)
        if "style" in conds and cond.style is None:
            conds.remove("style")  # no style given: nothing to guide towards
        n = cond.audio_feat.shape[0]
        L = cond.audio_feat.shape[1]
        audio_null = self.null_audio_feat.expand(n, L, -1) if "audio" in conds else cond.audio_feat
        person_styled = self._person(cond.shape, cond.style)
        person_null = self._person(cond.shape, None) if "style" in conds else person_styled
        audio_in, person_in = [audio_null], [person_null]
        for c in conds:
            if c == "audio":
                audio_in.append(cond.audio_feat)
                person_in.append(person_null)
            else:
                audio_in.append(cond.audio_feat if mode == "incremental" else audio_null)
                person_in.append(person_styled)
        scales = [float(guidance.scales[c]) for c in conds]
        return audio_in, person_in, scales, mode

    def student_guidance(self, cond: WindowCondition, guidance: Guidance, n: int) -> torch.Tensor:
        """The (N, 2) guidance input of a distilled student: (w_audio, w_style); w_style is 0 when
        no style is given (the student then plays the teacher's audio-only guidance)."""
        w_a = float(guidance.scales.get("audio", 1.0))
        w_s = float(guidance.scales.get("style", 0.0)) if cond.style is not None else 0.0
        return torch.tensor([[w_a, w_s]], dtype=torch.float32, device=self.device).expand(n, -1)

    def guided_denoiser(self, cond: WindowCondition, guidance: Guidance,
                        net: NetworkPass | None = None) -> GuidedDenoiser:
        """The denoiser a sampler runs for one window: ``denoise(x_t, t)`` -> guided network
        output, over ``net`` (default: this model's own denoising network)."""
        return GuidedDenoiser(self, cond, guidance, self.denoising_net if net is None else net)

    def guided_x0(self, x_t: torch.Tensor, t: int, cond: WindowCondition, guidance: Guidance) -> torch.Tensor:
        """One step of :meth:`guided_denoiser` on this model's own network."""
        return self.guided_denoiser(cond, guidance)(x_t, t)


# DenoisingNetwork.forward's signature: (motion, audio_feat, person, prev_motion, prev_audio, step,
# indicator, guidance) -> (N, n_prev + L, D). The model's module is one; a backend's call is another.
NetworkPass = Callable[..., torch.Tensor]


class GuidedDenoiser:
    """``denoise(x_t, t)`` -> network output for the window's frames (N, L, D) after CFG and
    optional dynamic thresholding: a teacher's guided passes run as one batch through ``net``; a
    distilled student runs one pass with the scales as its input. The inputs that do not change
    with the step are put together once, when the window's denoiser is made.

    A call is :meth:`rows` (the network's motion input, ``rows_per_window`` rows per window),
    one network pass over ``inputs``, then :meth:`combine`: diffposetalk/batching.py runs the pass
    of several windows' denoisers as one call with the same two halves."""

    def __init__(self, model: DiffPoseTalk, cond: WindowCondition, guidance: Guidance, net: NetworkPass):
        self.cond, self.guidance, self.net = cond, guidance, net
        self.L = model.cfg.n_motions
        self.student = model.cfg.kind == "student"
        self.n = n = cond.audio_feat.shape[0]
        prev_motion, prev_audio = model._prev(cond, n)
        if self.student:
            self.k, self.scales, self.mode = 1, [], None
            self.inputs = (cond.audio_feat, model._person(cond.shape, cond.style), prev_motion, prev_audio)
            self.indicator = cond.indicator
            self.student_guidance = model.student_guidance(cond, guidance, n)
            return
        audio_in, person_in, self.scales, self.mode = model.guidance_entries(cond, guidance)
        self.k = k = len(audio_in)
        self.inputs = (torch.cat(audio_in), torch.cat(person_in), torch.cat([prev_motion] * k),
                       torch.cat([prev_audio] * k))
        self.indicator = torch.cat([cond.indicator] * k) if cond.indicator is not None else None
        self.student_guidance = None

    @property
    def rows_per_window(self) -> int:
        """Network rows per x_t row: the k guided passes of a teacher, 1 for a student."""
        return self.k

    def rows(self, x_t: torch.Tensor) -> torch.Tensor:
        """The network's motion input for x_t (n, L, D): k copies, one per guided pass."""
        return x_t if self.k == 1 else torch.cat([x_t] * self.k)

    def combine(self, out: torch.Tensor) -> torch.Tensor:
        """Network output of the rows (k·n, n_prev + L, D) -> guided output (n, L, D)."""
        L, k = self.L, self.k
        if self.student:
            return out[:, -L:]
        if self.guidance.dynamic_threshold:
            ratio, lo, hi = self.guidance.dynamic_threshold
            s = torch.quantile(out[:, -L:].reshape(out.shape[0], -1).abs(), ratio, dim=1)
            s = torch.clamp(s, min=lo, max=hi)[..., None, None]
            out = torch.clamp(out, min=-s, max=s)
        results = [r[:, -L:] for r in out.chunk(k)]
        return combine_guidance(results, self.scales, self.mode)

    def __call__(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        rows = self.rows(x_t)
        step = torch.full((rows.shape[0],), t, dtype=torch.long, device=x_t.device)
        if self.student:
            return self.combine(self.net(rows, *self.inputs, step, self.indicator, self.student_guidance))
        return self.combine(self.net(rows, *self.inputs, step, self.indicator))


def combine_guidance(results: list[torch.Tensor], scales: list[float], mode: str) -> torch.Tensor:
    """x = r0 + sum_i w_i (r_{i+1} - ref_i).

    incremental: ref_i = r_i. independent: ref_i is the running sum so far — the reference adds
    into r0 in place, so from the second condition on its "r0" already holds the first guidance
    term; reproduced here so outputs match the reference, not an idealised formula."""
    acc = results[0]
    for i, w in enumerate(scales):
        ref = acc if mode == "independent" else results[i]
        acc = acc + w * (results[i + 1] - ref)
    return acc


# --- coefficients <-> network motion vectors ---------------------------------------------------

def coef_to_motion(exp: np.ndarray | torch.Tensor, pose, stats: dict, head_pose: bool):
    """exp (...,50), pose (...,6) raw FLAME -> normalised motion (..., 54 or 51): the reference
    normalises exp and pose, then drops jaw y/z (and global rotation without head pose)."""
    exp_n = (exp - stats["exp_mean"]) / stats["exp_std"]
    pose_n = (pose - stats["pose_mean"]) / stats["pose_std"]
    pose_in = pose_n[..., :4] if head_pose else pose_n[..., 3:4]
    cat = torch.cat if isinstance(exp_n, torch.Tensor) else np.concatenate
    return cat([exp_n, pose_in], -1)


def motion_to_coef(motion: torch.Tensor, stats: dict, head_pose: bool) -> dict[str, torch.Tensor]:
    """Normalised motion (..., D) -> {'exp' (...,50), 'pose' (...,6)} raw FLAME.

    As in the reference, the dropped jaw y/z are zeros in *normalised* space, so after
    de-normalisation they equal pose_mean[4:6]; without head pose the global rotation is 0."""
    exp = motion[..., :50]
    zeros = torch.zeros_like(motion[..., :2])
    if head_pose:
        pose = torch.cat([motion[..., 50:54], zeros], dim=-1)
    else:
        pose = torch.cat([torch.zeros_like(motion[..., :3]), motion[..., 50:51], zeros], dim=-1)
    exp = exp * stats["exp_std"] + stats["exp_mean"]
    pose = pose * stats["pose_std"] + stats["pose_mean"]
    if not head_pose:
        pose = pose.clone()
        pose[..., :3] = 0
    return {"exp": exp, "pose": pose}
