"""Several windows sampled together: one network pass per sampler step for all of them.

Each window keeps what makes it its own — its conditions, its guidance (scales, mode, dynamic
threshold, a teacher's k guided passes or a student's scale input; a window without a style has
fewer passes), its x_T and its noise draws — and shares only the network call. The network and
the sampling loops are row-independent, so every window's result equals its result alone up to
floating-point reassociation in the batched matrix products (about 1e-7).

Windows can share a call when they share the model (the network pass) and the sampler's
timesteps; :func:`sample_windows` is what streaming/scheduler.py runs for a batch of sessions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from diffposetalk.model import DiffPoseTalk, GuidedDenoiser, NetworkPass
from diffposetalk.sampler import NoiseSource, Sampler


class BatchedGuidedDenoiser:
    """``denoise(x_t, t)`` over the stacked x_t of several windows (each ``part.n`` rows, in
    order): one pass of ``net`` over every part's network rows, then each part's own guidance."""

    def __init__(self, parts: Sequence[GuidedDenoiser], net: NetworkPass):
        if not parts:
            raise ValueError("no windows to batch")
        if len({(p.student, p.L) for p in parts}) != 1:
            raise ValueError("windows of different models cannot share a network pass")
        if len({p.indicator is None for p in parts}) != 1:
            raise ValueError("windows disagree on the indicator input")
        self.parts, self.net = list(parts), net
        self.student = parts[0].student
        self.sizes = [p.n for p in parts]  # x_t rows per window
        self.row_counts = [p.n * p.rows_per_window for p in parts]  # network rows per window
        self.inputs = tuple(torch.cat(column) for column in zip(*(p.inputs for p in parts)))
        self.indicator = None if parts[0].indicator is None else torch.cat([p.indicator for p in parts])
        self.guidance = torch.cat([p.student_guidance for p in parts]) if self.student else None

    @property
    def rows(self) -> int:
        """Network rows of one call."""
        return sum(self.row_counts)

    def __call__(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        if self.student:
            # a student window is its own network row and its output's last L frames: the same
            # for every window, so one slice serves the call (no per-window split and concatenate)
            step = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
            out = self.net(x_t, *self.inputs, step, self.indicator, self.guidance)
            return out[:, -self.parts[0].L:]
        motion = torch.cat([p.rows(x) for p, x in zip(self.parts, x_t.split(self.sizes))])
        step = torch.full((motion.shape[0],), t, dtype=torch.long, device=x_t.device)
        out = self.net(motion, *self.inputs, step, self.indicator)
        return torch.cat([p.combine(o) for p, o in zip(self.parts, out.split(self.row_counts))])


@dataclass
class WindowJob:
    """One window to sample: its guided denoiser, x_T (n, L, D), and the noise source and window
    index its stochastic steps draw from."""

    denoiser: GuidedDenoiser
    x_T: torch.Tensor
    noise: NoiseSource | None = None
    window: int = 0


@torch.no_grad()
def sample_windows(model: DiffPoseTalk, sampler: Sampler, jobs: Sequence[WindowJob], net: NetworkPass,
                   timesteps: list[int] | None = None) -> list[torch.Tensor]:
    """Sample every job's window with ``sampler`` (over ``timesteps``, default the sampler's own)
    and one network pass per step for all of them -> each job's clean motion (n, L, D). A
    stochastic sampler's noise at step t is each job's own draw, in job order: every source draws
    what it would draw alone."""
    denoise = BatchedGuidedDenoiser([j.denoiser for j in jobs], net)
    x_T = torch.cat([j.x_T for j in jobs])
    noise: Callable[[int], torch.Tensor] | None = None
    if sampler.stochastic:
        sources = [(j.noise, j.window, tuple(j.x_T.shape)) for j in jobs]
        if any(src is None for src, _, _ in sources):
            raise ValueError(f"the {sampler.name} sampler is stochastic: every window needs its noise source")
        noise = lambda t: torch.cat([src.step(w, t, shape) for src, w, shape in sources])  # noqa: E731
    out = sampler.run(model, denoise, x_T, noise, timesteps)
    return list(out.split(denoise.sizes))
