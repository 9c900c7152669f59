"""Losses of the distilled student: the teacher's frames as targets, on normalised coefficients
(as training/losses.py without FLAME), over the real frames of a streaming window only."""

from __future__ import annotations

import torch

from training.losses import W_COEF_VEL, _masked_mean


def mouth_dims(head_pose: bool) -> list[int]:
    """Network motion dims that move the mouth: exp[0:5] and the jaw opening."""
    return [0, 1, 2, 3, 4, 53 if head_pose else 50]


def dim_weights(motion_dim: int, head_pose: bool, mouth_weight: float, device=None) -> torch.Tensor:
    w = torch.ones(motion_dim, device=device)
    w[mouth_dims(head_pose)] = mouth_weight
    return w / w.mean()  # the weighted loss keeps the scale of the plain mean


def student_losses(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   dim_w: torch.Tensor) -> dict[str, torch.Tensor]:
    """pred, target (N, L, D); mask (N, L) 1 = real frame (real frames are a prefix). ``coef``:
    weighted MSE over real frames; ``vel``: MSE of the frame-to-frame velocity, the step from the
    previous frame into the window included (a jump at a step boundary costs like one inside the
    window). Both start from the same previous frame, so that first velocity error is the first
    frame's error."""
    err = pred - target
    vel_err = torch.diff(err, dim=1, prepend=torch.zeros_like(err[:, :1]))
    mouth = [0, 1, 2, 3, 4, pred.shape[-1] - 1]  # exp[0:5] + jaw opening (last dim in both layouts)
    return {"coef": _masked_mean(err ** 2 * dim_w, mask), "vel": _masked_mean(vel_err ** 2 * dim_w, mask),
            "lip": _masked_mean(err[..., mouth] ** 2, mask).detach()}


def total(terms: dict[str, torch.Tensor], vel_weight: float = W_COEF_VEL) -> torch.Tensor:
    return terms["coef"] + vel_weight * terms["vel"]
