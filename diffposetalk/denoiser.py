"""The DiffPoseTalk denoising network ("decoder" architecture).

Tokens: [person] + [n_prev previous motion frames] + [n_motions noisy frames]; cross-attention
memory: [n_prev previous audio features] + [n_motions audio features], optionally restricted by the
alignment mask. Predicts x0 (or noise) for the previous and current frames.

A distilled student (``cfg.kind == "student"``) has one more input: the guidance scales
(w_audio, w_style), embedded and added to the person token like the diffusion step, so a single
pass reproduces the teacher's guided output at any scales."""

from __future__ import annotations

import torch
from torch import nn

from diffposetalk.config import ModelConfig
from diffposetalk.layers import alignment_mask, sinusoid_table


class DenoisingNetwork(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_prev = cfg.n_prev_motions
        self.n_motions = cfg.n_motions
        self.use_indicator = cfg.use_indicator
        self.learnable_pe = cfg.learnable_pe
        d = cfg.feature_dim
        person_dim = cfg.shape_dim + (cfg.d_style if cfg.use_style else 0)

        # diffusion-step embedding: MLP over a sinusoidal table indexed by the integer step
        self.register_buffer("TE", sinusoid_table(cfg.n_diff_steps + 1, d), persistent=False)
        self.diff_step_map = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        n_tokens = 1 + cfg.seq_len
        if cfg.learnable_pe:
            self.PE = nn.Parameter(torch.randn(1, n_tokens, d))
        else:
            self.register_buffer("PE", sinusoid_table(600, d)[:, :n_tokens], persistent=False)
        self.person_proj = nn.Linear(person_dim, d)
        self.feature_proj = nn.Linear(cfg.motion_dim + (1 if cfg.use_indicator else 0), d)
        layer = nn.TransformerDecoderLayer(d_model=d, nhead=cfg.n_heads, dim_feedforward=cfg.mlp_ratio * d,
                                           activation="gelu", batch_first=True)
        self.transformer = nn.TransformerDecoder(layer, num_layers=cfg.n_layers)
        if cfg.align_mask_width > 0:
            self.register_buffer("alignment_mask",
                                 alignment_mask(cfg.n_prev_motions, cfg.n_motions, cfg.align_mask_width),
                                 persistent=False)
        else:
            self.alignment_mask = None
        self.motion_dec = nn.Sequential(nn.Linear(d, d // 2), nn.GELU(), nn.Linear(d // 2, cfg.motion_dim))
        if cfg.kind == "student":
            self.guidance_map = nn.Sequential(nn.Linear(2, d), nn.GELU(), nn.Linear(d, d))
            # zero output at init: a student copied from its teacher starts as the teacher's plain pass
            nn.init.zeros_(self.guidance_map[2].weight)
            nn.init.zeros_(self.guidance_map[2].bias)
        else:
            self.guidance_map = None

    def forward(self, motion: torch.Tensor, audio_feat: torch.Tensor, person_feat: torch.Tensor,
                prev_motion: torch.Tensor, prev_audio: torch.Tensor, step: torch.Tensor,
                indicator: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """motion (N,L,D) noisy; audio_feat (N,L,F); person_feat (N,1,P); prev_motion (N,Lp,D);
        prev_audio (N,Lp,F); step (N,) int; indicator (N,L) 1 = real frame; guidance (N,2)
        (w_audio, w_style), students only. -> (N, Lp+L, D)."""
        person = self.person_proj(person_feat) + self.diff_step_map(self.TE[0, step]).unsqueeze(1)
        if self.guidance_map is not None:
            if guidance is None:
                raise ValueError("a distilled student needs the guidance scales (w_audio, w_style)")
            person = person + self.guidance_map(guidance.to(person.dtype)).unsqueeze(1)
        feats = torch.cat([prev_motion, motion], dim=1)
        if self.use_indicator:
            if indicator is None:
                indicator = torch.ones(motion.shape[:2], device=motion.device, dtype=motion.dtype)
            # previous frames always carry indicator 0
            ind = torch.cat([torch.zeros(indicator.shape[0], self.n_prev, device=indicator.device,
                                         dtype=motion.dtype), indicator.to(motion.dtype)], dim=1)
            feats = torch.cat([feats, ind.unsqueeze(-1)], dim=-1)
        tokens = torch.cat([person, self.feature_proj(feats)], dim=1)
        tokens = tokens + self.PE
        memory = torch.cat([prev_audio, audio_feat], dim=1)
        out = self.transformer(tokens, memory, memory_mask=self.alignment_mask)
        return self.motion_dec(out[:, 1:])
