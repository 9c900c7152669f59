"""Training losses: NT-Xent for the style encoder, and the denoiser's x0 losses (coefficients,
velocity/smoothness in vertex or coefficient space, head-pose terms) with the reference's masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Reference weights (vertex space needs FLAME).
W_VERT, W_VERT_VEL, W_VERT_SMOOTH = 2e6, 1e7, 1e5
W_HEAD_ANGLE, W_HEAD_VEL, W_HEAD_SMOOTH, W_HEAD_TRANS = 0.05, 5.0, 0.5, 0.5
# Without FLAME: velocity/smoothness on the normalised coefficients. The coefficient L2 (weight 1)
# plays the vertex term's part, so these keep the reference's vert:vel:smooth ratio 1 : 5 : 0.05.
W_COEF_VEL, W_COEF_SMOOTH = 5.0, 0.05


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Normalised temperature-scaled cross entropy (SimCLR). a[i] and b[i] are a positive pair;
    every other of the 2N vectors is a negative. a, b: (N, d)."""
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def _masked_mean(err: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of err (N, T, ...) over the frames where mask (N, T) is True."""
    m = mask.to(err.dtype).view(*mask.shape, *([1] * (err.ndim - 2))).expand_as(err)
    return (err * m).sum() / m.sum().clamp(min=1)


def _diff(x: torch.Tensor) -> torch.Tensor:
    return x[:, 1:] - x[:, :-1]


@dataclass
class LossWeights:
    vert: float = W_VERT
    vert_vel: float = W_VERT_VEL
    vert_smooth: float = W_VERT_SMOOTH
    coef_vel: float = W_COEF_VEL
    coef_smooth: float = W_COEF_SMOOTH
    head_angle: float = W_HEAD_ANGLE
    head_vel: float = W_HEAD_VEL
    head_smooth: float = W_HEAD_SMOOTH
    head_trans: float = W_HEAD_TRANS
    style: float = 0.0  # --style-loss (not in the reference)
    std: float = 0.0  # --std-loss (not in the reference)


def window_losses(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, n_prev: int, continued: bool,
                  head_pose: bool, to_vertices=None, sample_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Unweighted loss terms of one window.

    pred (N, n_prev + L, D): network x0 output. gt (N, L, D): (truncated) clean motion; for a
    continued window ``gt`` must already hold the previous GT frames in front (N, n_prev + L, D),
    which the prediction of the previous frames is also trained on, as in the reference.
    mask (N, L): real frames. ``to_vertices`` maps motion (N, T, D) -> vertices (N, T, V, 3).
    ``sample_weight`` (N,): relative weight of each sample in every term (see snr_weights)."""
    if continued:
        mask = torch.cat([torch.ones_like(mask[:, :n_prev]), mask], dim=1)
    else:
        pred = pred[:, n_prev:]
    if sample_weight is not None:  # a weighted mask: _masked_mean becomes a weighted mean
        mask = mask.to(pred.dtype) * sample_weight.to(pred.dtype)[:, None]
    out = {"coef": _masked_mean((pred - gt) ** 2, mask)}
    if to_vertices is not None:
        v_pred, v_gt = to_vertices(pred), to_vertices(gt)
        out["vert"] = _masked_mean((v_pred - v_gt) ** 2, mask)
        vel_p, vel_g = _diff(v_pred), _diff(v_gt)
        out["vert_vel"] = _masked_mean((vel_p - vel_g) ** 2, mask[:, 1:])
        out["vert_smooth"] = _masked_mean(_diff(vel_p) ** 2, mask[:, 2:])
    else:
        vel_p, vel_g = _diff(pred), _diff(gt)
        out["coef_vel"] = _masked_mean((vel_p - vel_g) ** 2, mask[:, 1:])
        out["coef_smooth"] = _masked_mean(_diff(vel_p) ** 2, mask[:, 2:])
    if head_pose:
        h_pred, h_gt = pred[..., 50:53], gt[..., 50:53]
        out["head_angle"] = _masked_mean((h_pred - h_gt) ** 2, mask)
        hv_p = _diff(h_pred)
        out["head_vel"] = _masked_mean((hv_p - _diff(h_gt)) ** 2, mask[:, 1:])
        out["head_smooth"] = _masked_mean(_diff(hv_p) ** 2, mask[:, 2:])
        if continued:
            # transition: last 3 GT previous frames then the first 3 predicted frames should have
            # continuous velocity and acceleration
            trans = torch.cat([h_gt[:, n_prev - 3:n_prev], h_pred[:, n_prev:n_prev + 3]], dim=1)
            vel = _diff(trans)
            acc = _diff(vel)
            out["head_trans"] = (_masked_mean((vel[:, 2:4] - vel[:, 1:3]) ** 2, mask[:, n_prev:n_prev + 2])
                                 + _masked_mean((acc[:, 1:] - acc[:, :-1]) ** 2, mask[:, n_prev:n_prev + 3]))
    return out


def snr_weights(alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample weight 1 + min(SNR(t), gamma), SNR = abar / (1 - abar).

    Why: with the reference's plain x0 loss, the nearly clean steps (where the answer is in x_t)
    weigh as little as the pure-noise ones, and a short CPU run ends with a denoiser that ignores
    x_t: its samples collapse to the conditional mean (little head motion, little diversity). The
    extra weight on high-SNR steps, capped at gamma as in min-SNR weighting, pushes it to use x_t
    while every step keeps at least weight 1."""
    snr = alpha_bar / (1 - alpha_bar).clamp(min=1e-8)
    return 1 + snr.clamp(max=gamma)


def total_loss(terms: dict[str, torch.Tensor], w: LossWeights) -> torch.Tensor:
    weights = {"coef": 1.0, "vert": w.vert, "vert_vel": w.vert_vel, "vert_smooth": w.vert_smooth,
               "coef_vel": w.coef_vel, "coef_smooth": w.coef_smooth, "head_angle": w.head_angle,
               "head_vel": w.head_vel, "head_smooth": w.head_smooth, "head_trans": w.head_trans,
               "style": w.style, "std": w.std}
    return sum(weights[k] * v for k, v in terms.items())
