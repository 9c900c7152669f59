"""Style encoder: a transformer over 100 normalised motion frames, mean-pooled to a style vector."""

from __future__ import annotations

import torch
from torch import nn

from diffposetalk.config import StyleEncoderConfig
from diffposetalk.layers import sinusoid_table


class StyleEncoder(nn.Module):
    def __init__(self, cfg: StyleEncoderConfig, motion_dim: int):
        super().__init__()
        d = cfg.feature_dim
        self.n_motions = cfg.n_motions
        self.register_buffer("PE", sinusoid_table(600, d), persistent=False)
        self.motion_proj = nn.Linear(motion_dim, d)
        layer = nn.TransformerEncoderLayer(d_model=d, nhead=cfg.n_heads, dim_feedforward=cfg.mlp_ratio * d,
                                           activation="gelu", batch_first=True)
        # nested tensors only matter with padding masks; keep the plain path (and ONNX-friendly)
        self.transformer = nn.TransformerEncoder(layer, num_layers=cfg.n_layers, enable_nested_tensor=False)

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        """motion (N, T, motion_dim) normalised -> style (N, feature_dim)."""
        feat = self.motion_proj(motion) + self.PE[:, : motion.shape[1]]
        return self.transformer(feat).mean(dim=1)
