"""What the networks cost, independent of the clock, and what the reference sampler costs on the clock.

- :func:`network_flops` counts the floating-point operations of one audio-encoder pass over a
  window and of one sampler step (all guided passes of ``guided_x0``) with
  ``torch.utils.flop_counter`` (matmuls, convolutions, attention: the bulk of the work). A backend
  runs the same networks, so the count holds for PyTorch, ONNX Runtime and TensorRT alike.
- :func:`time_reference` times the reference offline sampler (DDPM over all of the model's steps,
  every guided pass, ``diffposetalk.generate.generate_motion``) on a piece of audio, split into audio
  features / denoising / the rest, optionally on only the first K steps, scaled (each step is the
  same guided network call on the same shapes)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from diffposetalk.generate import SAMPLE_RATE, generate_motion, plan_windows
from diffposetalk.model import Guidance, WindowCondition
from diffposetalk.model_dir import LoadedModel
from diffposetalk.sampler import DDPMSampler, RandomNoise, Sampler


def passes_per_step(loaded: LoadedModel, sampler: Sampler, guidance: Guidance, has_style: bool) -> int:
    """Denoiser network passes (batch entries) of one sampler step: one per guided condition plus
    the unconditional one for a teacher; one for a distilled student (the scales are its input)."""
    return sampler.passes_per_window(loaded.model, guidance, has_style) // len(sampler.timesteps(loaded.model))


class _NoGrad:
    """Counting FLOPs tracks modules with autograd hooks, which trips over parameters that require
    grad; inference needs no grad, so it is switched off for the count and restored after."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self):
        self.saved = [(p, p.requires_grad) for p in self.model.parameters()]
        self.model.requires_grad_(False)
        self.ctx = torch.no_grad()
        self.ctx.__enter__()

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)
        for p, flag in self.saved:
            p.requires_grad_(flag)


def _count(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def network_flops(loaded: LoadedModel, window_samples: int | None, guidance: Guidance,
                  style: np.ndarray | None, stream_chunk: int | None = None) -> dict:
    """{'encoder': FLOPs of the audio encoder over ``window_samples`` (None: not counted) — or,
    with ``stream_chunk``, of one streaming-encoder step over that many new samples —, 'step':
    FLOPs of one guided_x0 call (batch 1), 'pass': 'step' per denoiser pass}."""
    model, cfg = loaded.model, loaded.config
    L, dev = cfg.n_motions, model.device
    if stream_chunk is not None:
        enc = network_flops_encoder(loaded, stream_chunk, stream=True)
    else:
        enc = None if window_samples is None else network_flops_encoder(loaded, window_samples)
    with _NoGrad(model):
        cond = WindowCondition(torch.zeros(1, L, cfg.feature_dim, device=dev), torch.zeros(1, cfg.shape_dim, device=dev),
                               None if style is None else torch.as_tensor(style, device=dev)[None],
                               None, None, torch.ones(1, L, device=dev) if cfg.use_indicator else None)
        step = _count(lambda: model.guided_x0(torch.zeros(1, L, cfg.motion_dim, device=dev), 1, cond, guidance))
    k = passes_per_step(loaded, DDPMSampler(), guidance, style is not None)
    return {"encoder": enc, "step": step, "pass": step / k}


class _PartialDDPM(DDPMSampler):
    """The reference sampler cut to its first ``k`` steps: same calls, same shapes, for timing only."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def timesteps(self, model):
        return super().timesteps(model)[:self.k]


class SampleTimer:
    """Wraps anything that denoises through ``sample`` (a Sampler, a streaming motion engine) and
    records how long each call takes with the benchmark's clock."""

    def __init__(self, inner, clock: Callable[[], float]):
        self.inner, self.clock, self.seconds = inner, clock, []

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name == "sample_after_features":
            def timed(*args, **kwargs):  # a scheduler's one-request step: timed whole, features included
                t = self.clock()
                out = attr(*args, **kwargs)
                self.seconds.append(self.clock() - t)
                return out

            return timed
        if name == "submit_after_features":
            def submit(audio, chunk, window, done):  # the same, from submission to the step's end
                t = self.clock()

                def timed_done(*result):
                    self.seconds.append(self.clock() - t)
                    done(*result)

                attr(audio, chunk, window, timed_done)

            return submit
        return attr

    def sample(self, *args, **kwargs):
        t = self.clock()
        out = self.inner.sample(*args, **kwargs)
        self.seconds.append(self.clock() - t)
        return out


def time_reference(loaded: LoadedModel, audio: np.ndarray, guidance: Guidance, style: np.ndarray | None,
                   clock: Callable[[], float], steps: int | None = None, seed: int = 0,
                   flops: dict | None = None) -> dict:
    """Time generate_motion with the reference DDPM sampler on ``audio`` (16 kHz). ``steps``: time
    only the first K of the model's diffusion steps and scale the denoising time by T/K.
    ``flops``: network_flops of this model (any window length; its per-pass count is used)."""
    from diffposetalk.errors import UserError

    cfg = loaded.config
    if cfg.kind == "student":
        raise UserError(f"{loaded.path} is a distilled student: the reference sampler runs on a teacher")
    T = cfg.n_diff_steps
    k = T if steps is None else steps
    if not 1 <= k <= T:
        raise UserError(f"--reference-steps must be in 1..{T}")
    sampler = SampleTimer(DDPMSampler() if k == T else _PartialDDPM(k), clock)
    shape = (torch.zeros(100) - loaded.stats["shape_mean"].cpu()) / loaded.stats["shape_std"].cpu()
    t0 = clock()
    generate_motion(loaded.model, audio, shape, None if style is None else torch.as_tensor(style), sampler,
                    guidance, RandomNoise(seed))
    total = clock() - t0
    seconds = len(audio) / SAMPLE_RATE
    plan = plan_windows(len(audio), cfg.n_motions, cfg.fps)
    per_step = passes_per_step(loaded, DDPMSampler(), guidance, style is not None)
    denoised = sum(sampler.seconds)
    denoise = denoised * T / k
    other = total - denoised  # audio features + window bookkeeping: not scaled
    out = {"model": None, "audio_seconds": round(seconds, 3), "windows": plan.n_windows,
           "diffusion_steps": T, "steps_timed": k, "passes_per_step": per_step,
           "seconds": round(denoise + other, 3), "denoise_s": round(denoise, 3), "other_s": round(other, 3),
           "rtf": (denoise + other) / seconds,
           "passes_per_audio_s": plan.n_windows * T * per_step / seconds}
    if flops is not None:
        clip = cfg.n_motions * plan.n_windows * (SAMPLE_RATE // cfg.fps)
        enc = network_flops_encoder(loaded, clip)
        out["gflop_per_audio_s"] = (plan.n_windows * T * per_step * flops["pass"] + enc) / seconds / 1e9
    return out


def network_flops_encoder(loaded: LoadedModel, samples: int, stream: bool = False) -> int:
    """FLOPs of one audio-encoder pass over ``samples`` (the reference encodes the padded clip once);
    ``stream``: of one streaming-encoder step over a chunk of ``samples`` new samples."""
    model, cfg = loaded.model, loaded.config
    if stream:
        enc = model.stream_encoder
        with _NoGrad(model):
            return _count(lambda: enc.step(torch.zeros(1, samples, device=model.device),
                                           enc.initial_state(1, model.device), peek=enc.cfg.delay))
    n_frames = samples // (SAMPLE_RATE // cfg.fps)
    with _NoGrad(model):
        return _count(lambda: model.audio_features(torch.zeros(1, samples, device=model.device), n_frames))


def architecture_key(loaded: LoadedModel) -> str:
    """The network sizes: a student (its own, usually shorter window) is compared with the
    reference run of a teacher of the same sizes."""
    c = loaded.config
    return repr((sorted(c.hubert.items()) if isinstance(c.hubert, dict) else c.hubert, c.feature_dim, c.n_heads,
                 c.n_layers, c.mlp_ratio, c.n_prev_motions, c.d_style, c.audio_hidden))


def gflop_per_audio_s(n_windows: int, audio_s: float, flops: dict, passes_per_window: int) -> float:
    """Streaming: every step encodes its audio window once and runs ``passes_per_window`` denoiser passes."""
    return n_windows * (flops["encoder"] + passes_per_window * flops["pass"]) / audio_s / 1e9 if audio_s else math.nan
