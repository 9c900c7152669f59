"""Losses of the distilled student: the teacher's frames as targets, on normalised coefficients
(as training/losses.py without FLAME), over the real frames of a streaming window only."""

from __future__ import annotations

import torch

from training.losses import W_COEF_VEL


def mouth_dims(head_pose: bool) -> list[int]:
    """Network motion dims that move the mouth: exp[0:5] and the jaw opening."""
    return [0, 1, 2, 3, 4, 53 if head_pose else 50]


def dim_weights(motion_dim: int, head_pose: bool, mouth_weight: float, device=None) -> torch.Tensor:
    w = torch.ones(motion_dim, device=device)
    w[mouth_dims(head_pose)] = mouth_weight
    return w / w.mean()  # the weighted loss keeps the scale of the plain mean


def student_losses(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, prev_last: torch.Tensor,
                   dim_w: torch.Tensor) -> dict[str, torch.Tensor]:
    """pred, target (N, L, D); mask (N, L) 1 = real frame (real frames are a prefix); prev_last
    (N, D) the last emitted frame before the window. ``coef``: weighted MSE over real frames;
    ``vel``: MSE of the frame-to-frame velocity, the step from the previous frame into the window
    included (a jump at a step boundary costs like one inside the window)."""
    m = mask.to(pred.dtype)[..., None]
    n = m.sum().clamp(min=1) * pred.shape[-1]
    coef = (((pred - target) ** 2) * dim_w * m).sum() / n
    prev = prev_last[:, None]
    vel_p = torch.diff(torch.cat([prev, pred], 1), dim=1)
    vel_t = torch.diff(torch.cat([prev, target], 1), dim=1)
    vel = (((vel_p - vel_t) ** 2) * dim_w * m).sum() / n
    mouth = [0, 1, 2, 3, 4, pred.shape[-1] - 1]  # exp[0:5] + jaw opening (last dim in both layouts)
    lip = (((pred - target)[..., mouth] ** 2) * m).sum() / (m.sum().clamp(min=1) * len(mouth))
    return {"coef": coef, "vel": vel, "lip": lip.detach()}


def total(terms: dict[str, torch.Tensor], vel_weight: float = W_COEF_VEL) -> torch.Tensor:
    return terms["coef"] + vel_weight * terms["vel"]
