"""Diffusion noise schedule (indexed 0..T with a zero beta_0), as the reference defines it."""

from __future__ import annotations

import torch
from torch import nn


def make_betas(num_steps: int, mode: str, beta_1: float = 1e-4, beta_T: float = 0.02,
               s: float = 0.008) -> torch.Tensor:
    if mode == "linear":
        betas = torch.linspace(beta_1, beta_T, num_steps)
    elif mode == "quadratic":
        betas = torch.linspace(beta_1 ** 0.5, beta_T ** 0.5, num_steps) ** 2
    elif mode == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-5, 5, num_steps)) * (beta_T - beta_1) + beta_1
    elif mode == "cosine":
        x = torch.linspace(0, num_steps, num_steps + 1)
        abar = torch.cos(((x / num_steps) + s) / (1 + s) * torch.pi * 0.5) ** 2
        abar = abar / abar[0]
        betas = torch.clip(1 - (abar[1:] / abar[:-1]), 0.0001, 0.999)
    else:
        raise ValueError(f"unknown diffusion schedule {mode!r}")
    return torch.cat([torch.zeros(1), betas])


class DiffusionSchedule(nn.Module):
    """Buffers betas, alphas, alpha_bars and the two sigma choices, each of length T + 1.

    alpha_bars are accumulated in log space one step at a time in float32 (not torch.cumprod) to
    reproduce the reference's values exactly; converted checkpoints also carry these buffers."""

    def __init__(self, num_steps: int, mode: str = "cosine"):
        super().__init__()
        betas = make_betas(num_steps, mode)
        alphas = 1 - betas
        log_abar = torch.log(alphas)
        for i in range(1, log_abar.shape[0]):
            log_abar[i] += log_abar[i - 1]
        alpha_bars = log_abar.exp()
        sigmas_flex = torch.sqrt(betas)
        sigmas_inflex = torch.zeros_like(sigmas_flex)
        for i in range(1, sigmas_flex.shape[0]):
            sigmas_inflex[i] = ((1 - alpha_bars[i - 1]) / (1 - alpha_bars[i])) * betas[i]
        sigmas_inflex = torch.sqrt(sigmas_inflex)

        self.num_steps = num_steps
        self.register_buffer("betas", betas)
        self.register_buffer("alphas", alphas)
        self.register_buffer("alpha_bars", alpha_bars)
        self.register_buffer("sigmas_flex", sigmas_flex)
        self.register_buffer("sigmas_inflex", sigmas_inflex)

    def sigma(self, t: int, flexibility: float = 0.0) -> torch.Tensor:
        """Posterior std at step t (flexibility 0) up to sqrt(beta_t) (flexibility 1)."""
        if not 0 <= flexibility <= 1:
            raise ValueError("flexibility must be in [0, 1]")
        return self.sigmas_flex[t] * flexibility + self.sigmas_inflex[t] * (1 - flexibility)

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) for a batch of integer steps t (N,)."""
        abar = self.alpha_bars[t].view(-1, 1, 1)
        return torch.sqrt(abar) * x0 + torch.sqrt(1 - abar) * eps
