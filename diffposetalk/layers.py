"""Small building blocks shared by the denoiser and the style encoder."""

from __future__ import annotations

import math

import torch


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    """(1, max_len, dim) sin/cos table, computed in float32 the way the reference does so that
    recomputed tables match the trained model bit for bit."""
    pe = torch.zeros(max_len, dim)
    position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe.unsqueeze(0)


def alignment_mask(n_prev: int, n_motions: int, width: int) -> torch.Tensor:
    """(1 + n_prev + n_motions, n_prev + n_motions) bool cross-attention mask, True = blocked.

    Motion token i may attend to audio tokens i-(width-1) .. i+(width-1); the person token (row 0)
    attends to every audio token."""
    length = n_prev + n_motions
    expansion = width - 1
    idx = torch.arange(length)
    lo = (idx - expansion).clamp(min=0)
    hi = idx + expansion + 1
    cols = torch.arange(length)
    blocked = ~((cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None]))
    return torch.cat([torch.zeros(1, length, dtype=torch.bool), blocked], dim=0)
