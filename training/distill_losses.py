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


def unrolled(student, b, steps: int, dim_w, vel_weight: float):
    """Run the student's DDIM steps from the teacher's noise; returns (loss, terms of the last step,
    per-step coef losses, the last step's x0). The next step's input is the re-noise of the
    detached x0."""
    import torch

    from diffposetalk.sampler import DDIMSampler

    sched = student.diffusion_sched
    ts = DDIMSampler(steps).timesteps(student)
    n, P = b.x_T.shape[0], student.cfg.n_prev_motions
    null = student.null_style_feat.expand(n, -1, -1)[:, 0] if student.cfg.use_style else None
    style = torch.where(b.has_style[:, None], b.style, null) if null is not None else None
    person = student._person(b.shape, style)
    x, loss, per_step, terms = b.x_T, 0.0, [], {}
    for i, t in enumerate(ts):
        step = torch.full((n,), t, dtype=torch.long, device=x.device)
        out = student.denoising_net(x, b.audio_feat, person, b.prev_motion, b.prev_audio, step,
                                    b.indicator if student.cfg.use_indicator else None, b.guidance)
        x0 = out[:, P:]
        terms = student_losses(x0, b.target, b.indicator, dim_w)
        loss = loss + total(terms, vel_weight) / len(ts)
        per_step.append(terms["coef"].detach())
        if i + 1 < len(ts):
            x0d = x0.detach()
            abar, abar_next = sched.alpha_bars[t], sched.alpha_bars[ts[i + 1]]
            eps = (x - torch.sqrt(abar) * x0d) / torch.sqrt(1 - abar)
            x = torch.sqrt(abar_next) * x0d + torch.sqrt(1 - abar_next) * eps
    return loss, terms, per_step, x0
