"""Samplers: turn x_T into a clean motion window, in the style of k-diffusion.

The sampling loops are functions over a denoiser callable ``denoise(x_t, t)`` (the guided network
output, :meth:`diffposetalk.model.DiffPoseTalk.guided_denoiser`), so running the networks on
another backend means passing another callable. A :class:`Sampler` names a loop with its settings
(steps, passes per window) for offline generation and the streaming engine. Noise comes from a
:class:`NoiseSource` so that runs can be reproduced from a file."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch

from diffposetalk.diffusion import DiffusionSchedule
from diffposetalk.model import DiffPoseTalk, Guidance


class NoiseSource(ABC):
    @abstractmethod
    def initial(self, shape: tuple[int, ...]) -> torch.Tensor:
        """x_T for the whole sequence (the reference reuses it for every window)."""

    @abstractmethod
    def step(self, window: int, t: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Noise z added when going from step t to t-1 in window ``window`` (t >= 2)."""


class RandomNoise(NoiseSource):
    """Seeded Gaussian noise; the same seed gives the same sequence of draws."""

    def __init__(self, seed: int | None = None, device: str | torch.device = "cpu"):
        self.gen = torch.Generator(device="cpu")
        if seed is None:
            self.gen.seed()
        else:
            self.gen.manual_seed(seed)
        self.device = device

    def _draw(self, shape):
        return torch.randn(shape, generator=self.gen).to(self.device)

    def initial(self, shape):
        return self._draw(shape)

    def step(self, window, t, shape):
        return self._draw(shape)


class FileNoise(NoiseSource):
    """Noise from an npz: ``x_T`` (100, D) (or (R, 100, D)) and ``z`` (n_windows, steps-1, 100, D)
    (or with an R axis after steps-1) where z[w, i] is added at step t = steps - i of window w."""

    def __init__(self, x_T: np.ndarray, z: np.ndarray | None, steps: int, device="cpu"):
        self.x_T = torch.as_tensor(np.asarray(x_T, dtype=np.float32))
        self.z = None if z is None else torch.as_tensor(np.asarray(z, dtype=np.float32))
        self.steps = steps
        self.device = device

    @classmethod
    def load(cls, path, steps: int, device="cpu") -> FileNoise:
        from diffposetalk.errors import UserError

        try:
            with np.load(path, allow_pickle=False) as data:
                x_T = data["x_T"]
                z = data["z"] if "z" in data.files else None
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"noise file {path}: {exc} (need npz with x_T and z)") from exc
        return cls(x_T, z, steps, device)

    def initial(self, shape):
        x = self.x_T
        if x.ndim == 2:
            x = x.unsqueeze(0).expand(shape[0], -1, -1)
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"noise file: x_T has shape {tuple(self.x_T.shape)}, need {tuple(shape[1:])}")
        return x.to(self.device)

    def step(self, window, t, shape):
        if self.z is None:
            raise ValueError("noise file has no 'z' but the sampler is stochastic (ddpm)")
        i = self.steps - t
        if window >= self.z.shape[0] or i >= self.z.shape[1]:
            raise ValueError(f"noise file: z has shape {tuple(self.z.shape)}; window {window}, "
                             f"step t={t} is out of range")
        z = self.z[window, i]
        if z.ndim == 2:
            z = z.unsqueeze(0).expand(shape[0], -1, -1)
        if tuple(z.shape) != tuple(shape):
            raise ValueError(f"noise file: z[w, i] has shape {tuple(z.shape)}, need {tuple(shape)}")
        return z.to(self.device)


# (x_t, t) -> the guided network output for the window's frames: DiffPoseTalk.guided_denoiser
Denoiser = Callable[[torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def sample_ddpm(denoise: Denoiser, x_T: torch.Tensor, schedule: DiffusionSchedule, timesteps: list[int],
                target: str = "sample", noise: Callable[[int], torch.Tensor] | None = None,
                flexibility: float = 0.0) -> torch.Tensor:
    """Ancestral sampling as the reference runs it: at each step t (descending) the posterior mean
    from the network's prediction of ``target`` ("sample": x0, "noise": eps) plus sigma_t z, with
    z = noise(t) (none at t = 1; default: fresh Gaussian draws)."""
    x = x_T
    for t in timesteps:
        if t > 1:
            z = noise(t) if noise is not None else torch.randn_like(x)
        else:
            z = torch.zeros_like(x)
        alpha, abar, abar_prev = schedule.alphas[t], schedule.alpha_bars[t], schedule.alpha_bars[t - 1]
        sigma = schedule.sigma(t, flexibility)
        out = denoise(x, t)
        if target == "noise":
            c0 = 1 / torch.sqrt(alpha)
            c1 = (1 - alpha) / torch.sqrt(1 - abar)
            x = c0 * (x - c1 * out) + sigma * z
        else:
            c0 = (1 - abar_prev) * torch.sqrt(alpha) / (1 - abar)
            c1 = (1 - alpha) * torch.sqrt(abar_prev) / (1 - abar)
            x = c0 * x + c1 * out + sigma * z
    return x


@torch.no_grad()
def sample_ddim(denoise: Denoiser, x_T: torch.Tensor, schedule: DiffusionSchedule, timesteps: list[int],
                target: str = "sample") -> torch.Tensor:
    """Deterministic DDIM (eta 0) over ``timesteps`` (descending), ending at t = 0."""
    x = x_T
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else 0
        abar, abar_prev = schedule.alpha_bars[t], schedule.alpha_bars[t_prev]
        out = denoise(x, t)
        if target == "noise":
            eps = out
            x0 = (x - torch.sqrt(1 - abar) * eps) / torch.sqrt(abar)
        else:
            x0 = out
            eps = (x - torch.sqrt(abar) * x0) / torch.sqrt(1 - abar)
        x = torch.sqrt(abar_prev) * x0 + torch.sqrt(1 - abar_prev) * eps
    return x


class Sampler(ABC):
    """A sampling function with its settings: which steps it evaluates and how many network
    passes that costs, for a given model."""

    name: str
    stochastic: bool = False

    @abstractmethod
    def timesteps(self, model: DiffPoseTalk) -> list[int]:
        """The network steps evaluated, in order."""

    def sample(self, model: DiffPoseTalk, denoise: Denoiser, x_T: torch.Tensor, noise: NoiseSource | None = None,
               window: int = 0) -> torch.Tensor:
        """One window: x_T (N, L, D) -> clean normalised motion (N, L, D), calling ``denoise``
        (e.g. ``model.guided_denoiser(cond, guidance)``) at each step; ``model`` gives the
        schedule, the prediction target and the number of steps; a stochastic sampler draws its
        step noise from ``noise`` (default: a fresh RandomNoise) for window ``window``."""
        source = noise if noise is not None or not self.stochastic else RandomNoise()
        shape = tuple(x_T.shape)
        return self.run(model, denoise, x_T, None if source is None else lambda t: source.step(window, t, shape))

    @abstractmethod
    def run(self, model: DiffPoseTalk, denoise: Denoiser, x_T: torch.Tensor,
            noise: Callable[[int], torch.Tensor] | None, timesteps: list[int] | None = None) -> torch.Tensor:
        """The sampling loop over ``timesteps`` (default: :meth:`timesteps`) with the step noise
        ``noise(t)`` (x_T's shape) of a stochastic sampler. Row-independent: several windows'
        x_T stacked, with their noise draws concatenated, sample each window as alone
        (diffposetalk/batching.py)."""

    def fewer_steps(self, model: DiffPoseTalk, steps: int) -> list[int] | None:
        """The timesteps of a cheaper run of this sampler in ``steps`` network steps, or None
        when it cannot run fewer (overload shedding, streaming/scheduler.py)."""
        return None

    def passes_per_window(self, model: DiffPoseTalk, guidance: Guidance, has_style: bool) -> int:
        if model.cfg.kind == "student":  # guidance distilled: one pass per step, the scales are an input
            return len(self.timesteps(model))
        conds = model.cfg.guiding_conditions if guidance.conditions is None else guidance.conditions
        k = 1 + sum(1 for c in conds if c == "audio" or (c == "style" and has_style))
        return k * len(self.timesteps(model))


class DDPMSampler(Sampler):
    """The reference ancestral sampler over all T steps with the x0 posterior mean. It cannot
    skip steps (its posterior is defined step by step): no cheaper run."""

    name = "ddpm"
    stochastic = True

    def __init__(self, flexibility: float = 0.0):
        self.flexibility = flexibility

    def timesteps(self, model):
        return list(range(model.cfg.n_diff_steps, 0, -1))

    def run(self, model, denoise, x_T, noise, timesteps=None):
        return sample_ddpm(denoise, x_T, model.diffusion_sched, timesteps or self.timesteps(model), model.cfg.target,
                           noise, self.flexibility)


class DDIMSampler(Sampler):
    """Deterministic DDIM (eta 0) over ``steps`` evenly spaced steps of the model's schedule."""

    name = "ddim"

    def __init__(self, steps: int = 50):
        if steps < 1:
            raise ValueError("DDIM needs at least one step")
        self.steps = steps

    def timesteps(self, model):
        return ddim_timesteps(model.cfg.n_diff_steps, self.steps)

    def run(self, model, denoise, x_T, noise=None, timesteps=None):
        return sample_ddim(denoise, x_T, model.diffusion_sched, timesteps or self.timesteps(model), model.cfg.target)

    def fewer_steps(self, model, steps):
        """DDIM runs any subset of the schedule; a distilled student only its own step count."""
        if model.cfg.kind == "student" or not 1 <= steps < len(self.timesteps(model)):
            return None
        return ddim_timesteps(model.cfg.n_diff_steps, steps)


def ddim_timesteps(n_diff_steps: int, steps: int) -> list[int]:
    """``steps`` evenly spaced steps of a T-step schedule, descending."""
    n = min(steps, n_diff_steps)
    ts = np.unique(np.round(np.linspace(n_diff_steps, 0, n + 1)).astype(int))[::-1]
    return [int(t) for t in ts if t > 0]


def make_sampler(name: str, steps: int | None, model: DiffPoseTalk) -> Sampler:
    from diffposetalk.errors import UserError

    student = model.cfg.kind == "student"
    if student:
        if name == "ddpm":
            raise UserError(f"this model is a distilled {model.cfg.student_steps}-step student: it runs "
                            "with the ddim sampler (--sampler ddim)")
        steps = steps or model.cfg.student_steps or 1
    if name == "ddpm":
        if steps not in (None, model.cfg.n_diff_steps):
            raise UserError(f"the ddpm sampler runs all {model.cfg.n_diff_steps} steps of the model; "
                            f"use --sampler ddim for {steps} steps")
        return DDPMSampler()
    if name == "ddim":
        if steps is not None and not 1 <= steps <= model.cfg.n_diff_steps:
            raise UserError(f"--steps must be in 1..{model.cfg.n_diff_steps}")
        return DDIMSampler(steps or 50)
    raise UserError(f"unknown sampler {name!r} (ddpm, ddim)")
