"""The narrow seam between the streaming session and whatever runs the networks.

The session only talks to two protocols, with numpy arrays at the boundary so an ONNX Runtime or
TensorRT backend can slot in without touching the streaming logic:

- :class:`AudioFeatureEngine`: one fixed-length normalised audio window -> per-frame features;
- :class:`MotionEngine`: one denoiser window (conditions in, clean motion out), with the sampler,
  guidance, person shape and the session's noise inside.

The implementations run on any engine backend (engines.networks.Networks; TorchNetworks for
PyTorch): :class:`NetworkAudioFeatures` calls its audio encoder, :class:`SamplingMotionEngine`
runs any :class:`diffposetalk.sampler.Sampler` (DDPM, DDIM, a distilled student's steps) over the
model's guided denoiser with the backend's network pass."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from diffposetalk.batching import WindowJob
from diffposetalk.model import DiffPoseTalk, Guidance, WindowCondition
from diffposetalk.sampler import RandomNoise, Sampler
from diffposetalk.units import FRAME_SAMPLES
from engines.networks import Networks, TorchNetworks, stream_config


class AudioFeatureEngine(Protocol):
    window_samples: int  # fixed input length (normalised 16 kHz samples)
    n_frames: int  # feature frames per window (window_samples / 640)
    feature_dim: int

    def features(self, audio: np.ndarray) -> np.ndarray:
        """(window_samples,) normalised audio -> (n_frames, feature_dim) float32."""


class MotionEngine(Protocol):
    n_motions: int  # denoiser window length (frames)
    n_prev: int  # previous frames it is conditioned on
    motion_dim: int
    start_motion: np.ndarray  # (n_prev, motion_dim): the model's first-window condition
    start_audio: np.ndarray  # (n_prev, feature_dim)
    null_style: np.ndarray | None  # the learned "no style" vector (crossfades to/from no style)

    def sample(self, audio_feat: np.ndarray, indicator: np.ndarray, prev_motion: np.ndarray,
               prev_audio: np.ndarray, style: np.ndarray | None, step: int) -> np.ndarray:
        """audio_feat (n_motions, F), indicator (n_motions,) 1 = real frame, prev_* (n_prev, ·),
        style (d_style,) or None -> clean normalised motion (n_motions, motion_dim)."""

# An engine shared with other sessions (streaming/scheduler.py) may refuse a step under overload:
# ``features`` or ``sample`` then raise StepShed and the session emits a cheap continuation of
# that step's frames (StreamSession._shed_step). A motion engine that ran a step with fewer
# sampler steps than asked says so in its ``degraded`` attribute (False when absent).


class StepShed(RuntimeError):
    """This step's network work was shed under overload: emit a continuation instead."""


class NetworkAudioFeatures:
    """The audio features of one fixed window length, on any backend's networks."""

    def __init__(self, networks: Networks, window_samples: int):
        if window_samples % FRAME_SAMPLES:
            raise ValueError("the audio window must be a whole number of motion frames")
        self.networks = networks
        self.window_samples = window_samples
        self.n_frames = window_samples // FRAME_SAMPLES
        self.feature_dim = networks.cfg.feature_dim
        networks.warm_audio(window_samples)  # compile/export now, not on the first live step

    def features(self, audio: np.ndarray) -> np.ndarray:
        if audio.shape != (self.window_samples,):
            raise ValueError(f"audio window has shape {audio.shape}, the engine is fixed to "
                             f"({self.window_samples},)")
        return self.networks.audio_features(audio)


class StreamingAudioFeatures:
    """A session's streaming audio encoder (diffposetalk/stream_encoder.py): each step pushes only
    the new running-normalised samples with the session's encoder state, and asks for the
    features of the frames its denoiser window covers — final features where the encoder has heard
    ``delay`` frames after the frame, and for the newest frames final features as if silence
    followed (the encoder's peek; they are replaced next step). Subclasses run the
    encoder (:meth:`_run`: alone on a backend, or in a batching scheduler's call)."""

    streaming = True
    KEEP = 64  # frames of features kept (a window asks for the newest hop + lookahead)

    def __init__(self, networks: Networks, window_samples: int, first_samples: int, hop_samples: int,
                 *more_samples: int):
        """window_samples: the session's window (its check); first_samples / hop_samples: the
        session's first chunk (hop + lookahead) and every later one (hop); more_samples: other
        chunk sizes its steps may push (a catching-up step's), made ready with the others."""
        if any(n % FRAME_SAMPLES for n in (window_samples, first_samples, hop_samples, *more_samples)):
            raise ValueError("audio windows and chunks must be whole numbers of motion frames")
        self.networks = networks
        self.chunks = (first_samples, hop_samples, *more_samples)
        self.window_samples = window_samples  # the session's window (what the HuBERT path would see)
        self.n_frames = window_samples // FRAME_SAMPLES
        self.feature_dim = networks.cfg.feature_dim
        self.delay = stream_config(networks.cfg).delay
        self.state = np.zeros((1, networks.stream_state_size()), np.float32)
        self.pushed = 0  # frames pushed so far
        self._final: dict[int, np.ndarray] = {}
        self._prov: dict[int, np.ndarray] = {}

    def _run(self, audio: np.ndarray, state: np.ndarray):
        """(n*640,), (1, Z) -> final (n + delay, F), provisional (n + delay, F), new state (1, Z)."""
        raise NotImplementedError

    def push(self, audio: np.ndarray) -> None:
        """The next ``n*640`` normalised samples of the stream (padding beyond its end is 0)."""
        audio, E = self.begin(audio)
        final, prov, self.state = self._run(audio, self.state)
        self.record(E, final, prov)

    def begin(self, audio: np.ndarray) -> tuple[np.ndarray, int]:
        """Count a chunk in: (the chunk as contiguous float32, its first frame). Then run the
        encoder on it with :attr:`state`, keep the new state, and :meth:`record` the results
        (``push`` does all three; a batching scheduler runs the encoder in between)."""
        if audio.ndim != 1 or not len(audio) or len(audio) % FRAME_SAMPLES:
            raise ValueError(f"audio chunk has shape {audio.shape}: need a whole number of 40 ms frames")
        E = self.pushed
        self.pushed += len(audio) // FRAME_SAMPLES  # also when the call is shed: the stream goes on without it
        return np.ascontiguousarray(audio, dtype=np.float32), E

    def record(self, E: int, final: np.ndarray, prov: np.ndarray) -> None:
        """Keep the encoder's features of the chunk whose first frame is ``E``."""
        # final row i is frame E - delay + i; the last ``delay`` rows (the newest frames, as if
        # silence followed) are replaced by the next chunk's
        for i in range(len(final)):
            if E + i - self.delay >= 0:
                self._final[E + i - self.delay] = final[i]
        for i in range(len(prov)):
            self._prov[E + i] = prov[i]
        # frames enter each book in increasing order (a later chunk only overwrites), so the oldest
        # are at the front: drop from there instead of scanning every key each step
        limit = self.pushed - self.KEEP
        for book in (self._final, self._prov):
            while book and (j := next(iter(book))) < limit:
                del book[j]

    def frames(self, start: int, stop: int) -> np.ndarray:
        """Features of frames [start, stop) (final, else provisional; a frame whose chunk was
        shed repeats the nearest earlier one)."""
        out = np.zeros((stop - start, self.feature_dim), np.float32)
        last = None
        for i, j in enumerate(range(start, stop)):
            f = self._final.get(j)
            f = self._prov.get(j) if f is None else f
            f = last if f is None else f
            if f is not None:
                out[i] = last = f
        return out

    def silence(self) -> np.ndarray:
        """Final features of a silent stream (the padding frames of a window), from a fresh
        state, in the session's chunk sizes (the shapes the backend has)."""
        state = np.zeros_like(self.state)
        final, _, state = self._run(np.zeros(self.chunks[0], np.float32), state)
        for _ in range(max(1, -(-2 * self.delay // (self.chunks[1] // FRAME_SAMPLES)))):
            final, _, state = self._run(np.zeros(self.chunks[1], np.float32), state)
        silent = final[-1].copy()
        for n in self.chunks[2:]:  # the other shapes now, not at a live step (a backend prepares each once)
            self._run(np.zeros(n, np.float32), state)
        return silent


class NetworkStreamingFeatures(StreamingAudioFeatures):
    """The streaming encoder of one session on any backend's networks (its own calls)."""

    def _run(self, audio, state):
        final, prov, new = self.networks.stream_audio_batch(audio[None], state)
        return final[0], prov[0], new


class SamplingMotionEngine:
    """One per session: the sampler over the model's guided denoiser, whose network passes run on
    ``networks`` (default: the model itself in PyTorch). x_T is drawn once from the seeded
    generator and reused for every window (as the reference does); a stochastic sampler's per-step
    noise comes from the same generator, so a session is reproducible for a seed and the same
    audio."""

    def __init__(self, model: DiffPoseTalk, sampler: Sampler, guidance: Guidance, shape: torch.Tensor,
                 seed: int = 0, networks: Networks | None = None, warm_up: bool = True):
        cfg = model.cfg
        self.model, self.sampler, self.guidance = model, sampler, guidance
        self.net = (TorchNetworks(model) if networks is None else networks).network_pass()
        self.n_motions, self.n_prev, self.motion_dim = cfg.n_motions, cfg.n_prev_motions, cfg.motion_dim
        self.use_indicator = cfg.use_indicator
        dev = model.device
        self.shape = torch.as_tensor(shape, dtype=torch.float32, device=dev).reshape(1, -1)
        self.noise = RandomNoise(seed, dev)
        self.x_T = self.noise.initial((1, cfg.n_motions, cfg.motion_dim))
        self.start_motion = model.start_motion_feat[0].detach().cpu().numpy()
        self.start_audio = model.start_audio_feat[0].detach().cpu().numpy()
        null = getattr(model, "null_style_feat", None)
        self.null_style = None if null is None else null[0, 0].detach().cpu().numpy()
        if warm_up:
            self._warm_up()

    @torch.inference_mode()
    def _warm_up(self) -> None:
        """One guided pass so the first live step does not pay the networks' first-call costs. It
        calls the denoiser directly: no draws from the session's noise generator (reproducibility)."""
        L, F = self.n_motions, self.model.cfg.feature_dim
        cond = WindowCondition(torch.zeros(1, L, F, device=self.model.device), self.shape,
                               None if self.null_style is None else self._t(self.null_style),
                               self._t(self.start_motion), self._t(self.start_audio),
                               torch.ones(1, L, device=self.model.device) if self.use_indicator else None)
        self.model.guided_denoiser(cond, self.guidance, self.net)(self.x_T, 1)

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.model.device)[None]

    @torch.inference_mode()
    def window_job(self, audio_feat, indicator, prev_motion, prev_audio, style, step) -> WindowJob:
        """The window :meth:`sample` samples, as a job diffposetalk.batching can batch."""
        cond = WindowCondition(self._t(audio_feat), self.shape, None if style is None else self._t(style),
                               self._t(prev_motion), self._t(prev_audio),
                               self._t(indicator) if self.use_indicator else None)
        return WindowJob(self.model.guided_denoiser(cond, self.guidance, self.net), self.x_T, self.noise, step)

    @torch.inference_mode()
    def sample(self, audio_feat, indicator, prev_motion, prev_audio, style, step):
        job = self.window_job(audio_feat, indicator, prev_motion, prev_audio, style, step)
        out = self.sampler.sample(self.model, job.denoiser, job.x_T, job.noise, window=job.window)
        return out[0].float().cpu().numpy()


class CoefDecoder:
    """Normalised network motion (n, D) -> raw FLAME exp (n, 50) and pose (n, 6)."""

    def __init__(self, stats: dict[str, torch.Tensor], head_pose: bool):
        # numpy, not torch: a dozen torch ops on a (2, 56) array cost more than a session's step
        # bookkeeping; the same float ops in the same order give the same values (tested)
        self.stats = {k: v.detach().cpu().numpy() for k, v in stats.items()}
        self.head_pose = head_pose

    def __call__(self, motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.stats
        exp = motion[..., :50] * s["exp_std"] + s["exp_mean"]
        # the dropped pose channels are zeros in normalised space, so they de-normalise to the mean
        pose = np.zeros(motion.shape[:-1] + (6,), motion.dtype) * s["pose_std"] + s["pose_mean"]
        if self.head_pose:
            pose[..., :4] = motion[..., 50:54] * s["pose_std"][:4] + s["pose_mean"][:4]
        else:
            pose[..., :3] = 0
            pose[..., 3] = motion[..., 50] * s["pose_std"][3] + s["pose_mean"][3]
        return exp, pose
