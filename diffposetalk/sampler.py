"""Samplers: turn x_T into a clean motion window with a model's guided x0 prediction.

Every sampler implements :class:`Sampler` (``sample`` one window), so offline generation and the
streaming engine can use any of them. Noise comes from a :class:`NoiseSource` so that runs can be
reproduced from a file."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from diffposetalk.model import DiffPoseTalk, Guidance, WindowCondition


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


class Sampler(ABC):
    name: str
    stochastic: bool = False

    @abstractmethod
    def timesteps(self, model: DiffPoseTalk) -> list[int]:
        """The network steps evaluated, in order."""

    @abstractmethod
    def sample(self, model: DiffPoseTalk, cond: WindowCondition, guidance: Guidance,
               x_T: torch.Tensor, noise: NoiseSource | None = None, window: int = 0) -> torch.Tensor:
        """One window: x_T (N, L, D) -> clean normalised motion (N, L, D)."""

    def passes_per_window(self, model: DiffPoseTalk, guidance: Guidance, has_style: bool) -> int:
        if model.cfg.kind == "student":  # guidance distilled: one pass per step, the scales are an input
            return len(self.timesteps(model))
        conds = model.cfg.guiding_conditions if guidance.conditions is None else guidance.conditions
        k = 1 + sum(1 for c in conds if c == "audio" or (c == "style" and has_style))
        return k * len(self.timesteps(model))


class DDPMSampler(Sampler):
    """The reference ancestral sampler over all T steps with the x0 posterior mean."""

    name = "ddpm"
    stochastic = True

    def __init__(self, flexibility: float = 0.0):
        self.flexibility = flexibility

    def timesteps(self, model):
        return list(range(model.cfg.n_diff_steps, 0, -1))

    @torch.no_grad()
    def sample(self, model, cond, guidance, x_T, noise=None, window=0):
        sched = model.diffusion_sched
        if noise is None:
            noise = RandomNoise()
        x = x_T
        for t in self.timesteps(model):
            z = noise.step(window, t, tuple(x.shape)) if t > 1 else torch.zeros_like(x)
            alpha, abar, abar_prev = sched.alphas[t], sched.alpha_bars[t], sched.alpha_bars[t - 1]
            sigma = sched.sigma(t, self.flexibility)
            target = model.guided_x0(x, t, cond, guidance)
            if model.cfg.target == "noise":
                c0 = 1 / torch.sqrt(alpha)
                c1 = (1 - alpha) / torch.sqrt(1 - abar)
                x = c0 * (x - c1 * target) + sigma * z
            else:
                c0 = (1 - abar_prev) * torch.sqrt(alpha) / (1 - abar)
                c1 = (1 - alpha) * torch.sqrt(abar_prev) / (1 - abar)
                x = c0 * x + c1 * target + sigma * z
        return x


class DDIMSampler(Sampler):
    """Deterministic DDIM (eta 0) over ``steps`` evenly spaced steps of the model's schedule."""

    name = "ddim"

    def __init__(self, steps: int = 50):
        if steps < 1:
            raise ValueError("DDIM needs at least one step")
        self.steps = steps

    def timesteps(self, model):
        T = model.cfg.n_diff_steps
        n = min(self.steps, T)
        ts = np.unique(np.round(np.linspace(T, 0, n + 1)).astype(int))[::-1]
        return [int(t) for t in ts if t > 0]

    @torch.no_grad()
    def sample(self, model, cond, guidance, x_T, noise=None, window=0):
        sched = model.diffusion_sched
        ts = self.timesteps(model)
        x = x_T
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else 0
            abar, abar_prev = sched.alpha_bars[t], sched.alpha_bars[t_prev]
            out = model.guided_x0(x, t, cond, guidance)
            if model.cfg.target == "noise":
                eps = out
                x0 = (x - torch.sqrt(1 - abar) * eps) / torch.sqrt(abar)
            else:
                x0 = out
                eps = (x - torch.sqrt(abar) * x0) / torch.sqrt(1 - abar)
            x = torch.sqrt(abar_prev) * x0 + torch.sqrt(1 - abar_prev) * eps
        return x


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
