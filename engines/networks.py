"""Engine backends: one interface for the three networks of a model, a registry, the automatic
choice, and the cache keys of exported files.

Every backend implements :class:`Networks` with numpy arrays at the boundary:

- ``audio_features(audio (S,))`` -> (S / 640, feature_dim): the audio encoder and its 768->512
  projection (``DiffPoseTalk.audio_features``) at one fixed window length per compiled graph;
- ``denoise(inputs)`` -> (N, n_prev + L, D): one ``DenoisingNetwork.forward`` at fixed (L, n_prev)
  and batch 1..k (the teacher batches its k CFG passes; a student has one pass + guidance input);
- ``style(motion (N, T, D))`` -> (N, d_style).

Samplers and ``guided_x0`` stay backend-independent: :func:`backend_model` gives a copy of the
model whose denoiser and style encoder are thin torch modules calling a backend, so
diffposetalk.sampler and streaming.motion run unchanged on any backend (see docs/EXPORT.md)."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffposetalk.model import DiffPoseTalk

log = logging.getLogger("dpt_live.backends")

BACKEND_NAMES = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "int8", "fp16")
# what each backend can run: dynamic int8 is an ONNX Runtime CPU feature, fp16 a TensorRT one
BACKEND_PRECISIONS = {"torch": ("fp32",), "onnxruntime": ("fp32", "int8"), "tensorrt": ("fp32", "fp16")}
FRAME_SAMPLES = 640  # 16 kHz samples per 25 fps motion frame


def denoiser_input_names(cfg) -> list[str]:
    """The denoiser graph's inputs, in DenoisingNetwork.forward order (optional ones only when the
    model has them)."""
    names = ["motion", "audio_feat", "person", "prev_motion", "prev_audio", "step"]
    if cfg.use_indicator:
        names.append("indicator")
    if cfg.kind == "student":
        names.append("guidance")
    return names


def call_denoiser(net: nn.Module, inputs: dict):
    """DenoisingNetwork.forward with its inputs named as in :func:`denoiser_input_names`
    (the optional ones may be absent)."""
    return net(inputs["motion"], inputs["audio_feat"], inputs["person"], inputs["prev_motion"], inputs["prev_audio"],
               inputs["step"], inputs.get("indicator"), inputs.get("guidance"))


def denoiser_batch(cfg) -> int:
    """The largest batch a window needs: 1 + guiding conditions for a teacher (all CFG passes in
    one call), 1 for a student."""
    return 1 if cfg.kind == "student" else 1 + len(cfg.guiding_conditions)


class Networks(ABC):
    """The three network calls of one model on one backend (numpy in, float32 numpy out)."""

    name: str
    precision: str = "fp32"

    @abstractmethod
    def audio_features(self, audio: np.ndarray) -> np.ndarray:
        """(S,) normalised 16 kHz audio, S a multiple of 640 -> (S // 640, feature_dim)."""

    @abstractmethod
    def denoise(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """inputs by :func:`denoiser_input_names` (batch N first) -> (N, n_prev + L, D)."""

    @abstractmethod
    def style(self, motion: np.ndarray) -> np.ndarray:
        """(N, T, D) normalised motion -> (N, d_style)."""

    def describe(self) -> str:
        return f"{self.name} ({self.precision})"

    _warm_windows: frozenset = frozenset()

    def warm_audio(self, window_samples: int) -> None:
        """One audio pass per window length and Networks object: export, session and first-call
        costs fall on the first session build, and a rebuilt session (a server's reset or new
        guidance) shares the networks and does not pay that pass again."""
        if window_samples not in self._warm_windows:
            self.audio_features(np.zeros(window_samples, np.float32))
            self._warm_windows = self._warm_windows | {window_samples}


class TorchNetworks(Networks):
    """The PyTorch reference implementation of the interface (what every other backend is
    compared with)."""

    name = "torch"

    def __init__(self, model: DiffPoseTalk):
        self.model = model

    @torch.inference_mode()
    def audio_features(self, audio):
        check_window(audio)
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(self.model.device)
        return self.model.audio_features(x[None], len(audio) // FRAME_SAMPLES)[0].float().cpu().numpy()

    @torch.inference_mode()
    def denoise(self, inputs):
        dev = self.model.device
        args = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in inputs.items()}
        return call_denoiser(self.model.denoising_net, args).float().cpu().numpy()

    @torch.inference_mode()
    def style(self, motion):
        if self.model.style_encoder is None:
            raise ValueError("this model has no style encoder")
        x = torch.from_numpy(np.ascontiguousarray(motion, dtype=np.float32)).to(self.model.device)
        return self.model.style_encoder(x).float().cpu().numpy()


def check_window(audio: np.ndarray) -> None:
    if audio.ndim != 1 or len(audio) == 0 or len(audio) % FRAME_SAMPLES:
        raise ValueError(f"audio window has shape {audio.shape}: need (S,) with S a positive multiple of "
                         f"{FRAME_SAMPLES} samples (one 40 ms motion frame)")


# --- torch adapters: a backend behind DiffPoseTalk's own module slots --------------------------------

class BackendDenoiser(nn.Module):
    """DenoisingNetwork.forward's signature, computed by a backend."""

    def __init__(self, networks: Networks, cfg):
        super().__init__()
        self.networks = networks
        self.names = denoiser_input_names(cfg)
        self.student = cfg.kind == "student"

    def forward(self, motion, audio_feat, person_feat, prev_motion, prev_audio, step, indicator=None,
                guidance=None):
        if self.student and guidance is None:
            raise ValueError("a distilled student needs the guidance scales (w_audio, w_style)")
        if "indicator" in self.names and indicator is None:
            indicator = torch.ones(motion.shape[:2], device=motion.device)
        given = {"motion": motion, "audio_feat": audio_feat, "person": person_feat, "prev_motion": prev_motion,
                 "prev_audio": prev_audio, "step": step, "indicator": indicator, "guidance": guidance}
        inputs = {}
        for n in self.names:
            dtype = np.int64 if n == "step" else np.float32
            inputs[n] = np.ascontiguousarray(given[n].detach().cpu().numpy(), dtype=dtype)
        return torch.from_numpy(self.networks.denoise(inputs)).to(motion.device)


class BackendStyleEncoder(nn.Module):
    def __init__(self, networks: Networks, n_motions: int):
        super().__init__()
        self.networks = networks
        self.n_motions = n_motions

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        out = self.networks.style(np.ascontiguousarray(motion.detach().cpu().numpy(), dtype=np.float32))
        return torch.from_numpy(out).to(motion.device)


def backend_model(model: DiffPoseTalk, networks: Networks) -> DiffPoseTalk:
    """A shallow copy of ``model`` (parameters shared) whose denoiser and style encoder run on
    ``networks``; samplers, guided_x0 and the streaming motion engine use it unchanged."""
    if isinstance(networks, TorchNetworks):
        return model
    twin = copy.copy(model)
    twin._modules = dict(model._modules)  # copy.copy shares the module dict: replace in a new one
    twin._modules["denoising_net"] = BackendDenoiser(networks, model.cfg)
    if model.style_encoder is not None:
        twin._modules["style_encoder"] = BackendStyleEncoder(networks, model.style_encoder.n_motions)
    return twin


class BackendAudioFeatures:
    """streaming.motion.AudioFeatureEngine on a backend, fixed to one window length."""

    def __init__(self, networks: Networks, window_samples: int, feature_dim: int):
        if window_samples % FRAME_SAMPLES:
            raise ValueError("the audio window must be a whole number of motion frames")
        self.networks = networks
        self.window_samples = window_samples
        self.n_frames = window_samples // FRAME_SAMPLES
        self.feature_dim = feature_dim
        networks.warm_audio(window_samples)  # compile/export now, not on the first live step

    def features(self, audio: np.ndarray) -> np.ndarray:
        if audio.shape != (self.window_samples,):
            raise ValueError(f"audio window has shape {audio.shape}, the engine is fixed to "
                             f"({self.window_samples},)")
        return self.networks.audio_features(audio)


# --- availability and the automatic choice -------------------------------------------------------------

def cuda_available() -> bool:
    try:
        import pycuda.driver as cuda

        cuda.init()
        return cuda.Device.count() > 0
    except Exception:  # no pycuda, no driver, no device: all mean "no CUDA here"
        return torch.cuda.is_available()


def backend_unavailable(name: str) -> str | None:
    """None when ``name`` can run here, else the reason it cannot."""
    if name == "torch":
        return None
    if name == "onnxruntime":
        try:
            import onnx  # noqa: F401  (export on demand needs it)
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return f"onnxruntime/onnx not installed ({exc.name})"
        return None
    if name == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "the tensorrt Python package is not installed (pip install tensorrt pycuda)"
        try:
            import pycuda.driver  # noqa: F401
        except ImportError:
            return "pycuda is not installed (pip install pycuda)"
        if not cuda_available():
            return "no CUDA device"
        return None
    return f"unknown backend {name!r}"


def choose_backend(requested: str, precision: str = "fp32") -> str:
    """auto -> the fastest backend that can run here at ``precision``: tensorrt (GPU + TensorRT),
    else onnxruntime, else torch. Logs the choice and why the faster ones were passed over."""
    if requested != "auto":
        return requested
    skipped = []
    for name in ("tensorrt", "onnxruntime", "torch"):
        why = backend_unavailable(name)
        if why is None and precision not in BACKEND_PRECISIONS[name]:
            why = f"no {precision}"
        if why is None:
            log.info("backend auto -> %s%s", name, f" ({'; '.join(skipped)})" if skipped else "")
            return name
        skipped.append(f"{name}: {why}")
    return "torch"


def make_networks(loaded, backend: str, precision: str = "fp32", threads: int | None = None,
                  cache_dir: str | Path | None = None) -> Networks:
    """The networks of a loaded model directory on a concrete backend (not "auto")."""
    from diffposetalk.errors import UserError

    if backend not in BACKEND_NAMES:
        raise UserError(f"unknown backend {backend!r} (choose from {', '.join(BACKEND_NAMES)})")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision not in BACKEND_PRECISIONS[backend]:
        raise UserError(f"the {backend} backend runs {'/'.join(BACKEND_PRECISIONS[backend])}, not {precision}")
    if backend == "torch":
        return TorchNetworks(loaded.model)
    why = backend_unavailable(backend)
    if why is not None:
        raise UserError(f"backend {backend!r} cannot run here: {why}")
    # one set of sessions/engines per model and settings, shared by every stream of this process
    # (a server's sessions): a full-size HuBERT graph is ~400 MB, and ORT/TRT runs are thread-safe
    key = (backend, model_hash(loaded.model), precision, threads or 1, str(cache_dir or cache_root()))
    with _NETWORKS_LOCK:
        nets = _NETWORKS.get(key)
        if nets is None:
            if backend == "onnxruntime":
                from engines.onnx_runtime import OrtNetworks

                nets = OrtNetworks.for_model(loaded, precision, threads=threads, cache_dir=cache_dir)
            else:
                from engines.tensorrt_runtime import TrtNetworks

                nets = TrtNetworks.for_model(loaded, precision, cache_dir=cache_dir)
            _NETWORKS[key] = nets
    return nets


_NETWORKS: dict[tuple, Networks] = {}
_NETWORKS_LOCK = threading.Lock()


# --- cache keys ---------------------------------------------------------------------------------------

def cache_root() -> Path:
    """Where exported graphs and engines live: $DPT_LIVE_CACHE, else ~/.cache/dpt-live."""
    env = os.environ.get("DPT_LIVE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dpt-live"


def model_hash(model: DiffPoseTalk) -> str:
    """16 hex digits over the config and every tensor of the state dict (names, dtypes, shapes,
    bytes): the same weights give the same key wherever they were loaded from, and any change to a
    weight gives a new one."""
    state = model.state_dict()
    # remembered per model object until a tensor is replaced or changed in place (its version
    # counter moves): hashing a full-size model takes seconds, every session build asks for it
    fingerprint = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
    cached = getattr(model, "_dpt_live_hash", None)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    h = hashlib.sha256(model.cfg.to_json().encode())
    for name, t in sorted(state.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()[:16]
    object.__setattr__(model, "_dpt_live_hash", (fingerprint, digest))
    return digest


def onnx_cache_dir(model: DiffPoseTalk, root: Path | None = None) -> Path:
    return (root or cache_root()) / "onnx" / model_hash(model)


def trt_cache_key(gpu_name: str, compute_capability: tuple[int, int] | str, trt_version: str, model_key: str,
                  graph: str, precision: str = "fp32") -> str:
    """A TensorRT plan runs only on the TensorRT version and GPU it was built for: the key names
    all of them plus the model and graph (file name with its fixed shape) it came from.
    Pure Python, so it is unit-tested without a GPU."""
    if isinstance(compute_capability, tuple):
        compute_capability = f"{compute_capability[0]}.{compute_capability[1]}"
    parts = {"gpu": gpu_name.strip(), "cc": str(compute_capability), "trt": trt_version.strip(),
             "model": model_key, "graph": graph, "precision": precision}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() else "-" for c in gpu_name.strip()).strip("-").lower() or "gpu"
    return f"{slug}_sm{str(compute_capability).replace('.', '')}_trt{trt_version.strip()}_{digest}"
