"""Engine backends: one interface for the three networks of a model, the backends' names and
precisions, their availability here, and the automatic choice.

Every backend implements :class:`Networks` with numpy arrays at the boundary:

- ``audio_features(audio (S,))`` -> (S / 640, feature_dim): the audio encoder and its 768->512
  projection (``DiffPoseTalk.audio_features``) at one fixed window length per compiled graph;
  ``audio_features_batch(audio (B, S))`` -> (B, S / 640, feature_dim): B windows in one call
  (streaming/scheduler.py serves every session of a process with it);
- ``denoise(inputs)`` -> (N, n_prev + L, D): one ``DenoisingNetwork.forward`` at fixed (L, n_prev)
  and any batch N (a teacher's k CFG passes per window, a student's one pass + guidance input,
  times the windows batched together);
- ``style(motion (N, T, D))`` -> (N, d_style).

Samplers and classifier-free guidance stay backend-independent: ``network_pass()`` gives the
denoiser call with DenoisingNetwork.forward's signature that DiffPoseTalk.guided_denoiser runs
over (see docs/EXPORT.md). The ONNX Runtime and TensorRT runtimes (engines/onnx_runtime.py,
engines/tensorrt_runtime.py) load exported artefacts found through engines/artefacts.py;
export/prepare.py makes them on demand and opens a backend by name."""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from abc import ABC, abstractmethod

import numpy as np
import torch

from diffposetalk.config import ModelConfig
from diffposetalk.errors import UserError
from diffposetalk.model import DiffPoseTalk, NetworkPass
from diffposetalk.stream_encoder import StreamEncoderConfig, state_size
from diffposetalk.units import FRAME_SAMPLES

log = logging.getLogger("dpt_live.backends")

BACKEND_NAMES = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "int8", "fp16")
# what each backend can run: dynamic int8 is an ONNX Runtime CPU feature, fp16 a TensorRT one
BACKEND_PRECISIONS = {"torch": ("fp32",), "onnxruntime": ("fp32", "int8"), "tensorrt": ("fp32", "fp16")}


def denoiser_input_names(cfg) -> list[str]:
    """The denoiser graph's inputs, in DenoisingNetwork.forward order (optional ones only when the
    model has them)."""
    names = ["motion", "audio_feat", "person", "prev_motion", "prev_audio", "step"]
    if cfg.use_indicator:
        names.append("indicator")
    if cfg.kind == "student":
        names.append("guidance")
    return names


def call_denoiser(net: NetworkPass, inputs: dict):
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
    cfg: ModelConfig
    precision: str = "fp32"

    @abstractmethod
    def audio_features(self, audio: np.ndarray) -> np.ndarray:
        """(S,) normalised 16 kHz audio, S a multiple of 640 -> (S // 640, feature_dim)."""

    def audio_features_batch(self, audio: np.ndarray) -> np.ndarray:
        """(B, S) windows of the same length -> (B, S // 640, feature_dim). This default runs them
        one by one; a runtime with a batch axis runs them in one call."""
        check_windows(audio)
        return np.stack([self.audio_features(a) for a in audio])

    @abstractmethod
    def denoise(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """inputs by :func:`denoiser_input_names` (batch N first) -> (N, n_prev + L, D)."""

    # --- the streaming audio encoder (diffposetalk/stream_encoder.py), when the model has one -----
    @property
    def has_stream_encoder(self) -> bool:
        return self.cfg.stream_encoder is not None

    def stream_state_size(self) -> int:
        """Floats of one session's encoder state (a zero row is a fresh stream)."""
        return state_size(stream_config(self.cfg))

    def stream_audio_batch(self, audio: np.ndarray, state: np.ndarray):
        """(B, n*640) new running-normalised samples of B sessions and their states (B, Z) ->
        (final (B, n + delay, F): features of frames t - delay, the last ``delay`` rows those of
        the newest frames as if silence followed (StreamEncoder.step's peek), provisional
        (B, n + delay, F): frames t, new states (B, Z)). Rows are independent."""
        raise NotImplementedError(f"the {self.name} backend has no streaming audio encoder")

    @abstractmethod
    def style(self, motion: np.ndarray) -> np.ndarray:
        """(N, T, D) normalised motion -> (N, d_style)."""

    def describe(self) -> str:
        return f"{self.name} ({self.precision})"

    def network_pass(self) -> NetworkPass:
        """DenoisingNetwork.forward's signature on torch tensors, computed by :meth:`denoise`:
        the pass DiffPoseTalk.guided_denoiser (CFG) and the samplers run over."""
        names = denoiser_input_names(self.cfg)
        student = self.cfg.kind == "student"

        def run(motion, audio_feat, person, prev_motion, prev_audio, step, indicator=None, guidance=None):
            if student and guidance is None:
                raise ValueError("a distilled student needs the guidance scales (w_audio, w_style)")
            if "indicator" in names and indicator is None:
                indicator = torch.ones(motion.shape[:2], device=motion.device)
            given = {"motion": motion, "audio_feat": audio_feat, "person": person, "prev_motion": prev_motion,
                     "prev_audio": prev_audio, "step": step, "indicator": indicator, "guidance": guidance}
            inputs = {n: np.ascontiguousarray(given[n].detach().cpu().numpy(),
                                              dtype=np.int64 if n == "step" else np.float32) for n in names}
            return torch.from_numpy(self.denoise(inputs)).to(motion.device)

        return run

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
        self.model, self.cfg = model, model.cfg

    def network_pass(self) -> NetworkPass:
        return self.model.denoising_net  # the module itself: no numpy round trip

    def warm_audio(self, window_samples: int) -> None:
        """Nothing to export or load, and a TorchNetworks is made per session: no warm-up pass
        (it would be paid again at every session build)."""

    def audio_features(self, audio):
        check_window(audio)
        return self.audio_features_batch(audio[None])[0]

    @torch.inference_mode()
    def audio_features_batch(self, audio):
        check_windows(audio)
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(self.model.device)
        return self.model.audio_features(x, audio.shape[1] // FRAME_SAMPLES).float().cpu().numpy()

    @torch.inference_mode()
    def stream_audio_batch(self, audio, state):
        check_stream_rows(audio, state, self.stream_state_size())
        enc = self.model.stream_encoder
        dev = self.model.device
        final, prov, new = enc.step(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(dev),
                                    torch.from_numpy(np.ascontiguousarray(state, dtype=np.float32)).to(dev),
                                    peek=enc.cfg.delay)
        return final.float().cpu().numpy(), prov.float().cpu().numpy(), new.float().cpu().numpy()

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


def check_windows(audio: np.ndarray) -> None:
    if audio.ndim != 2 or len(audio) == 0 or audio.shape[1] == 0 or audio.shape[1] % FRAME_SAMPLES:
        raise ValueError(f"audio windows have shape {audio.shape}: need (B, S) with B >= 1 and S a positive "
                         f"multiple of {FRAME_SAMPLES} samples (one 40 ms motion frame)")


def stream_config(cfg: ModelConfig) -> StreamEncoderConfig:
    if cfg.stream_encoder is None:
        raise UserError("this model has no streaming audio encoder (add one with `dpt-live distill-encoder`)")
    return StreamEncoderConfig.from_dict(cfg.stream_encoder)


def check_stream_rows(audio: np.ndarray, state: np.ndarray, size: int) -> None:
    if audio.ndim != 2 or len(audio) == 0 or audio.shape[1] == 0 or audio.shape[1] % FRAME_SAMPLES:
        raise ValueError(f"audio chunks have shape {audio.shape}: need (B, S) with B >= 1 and S a positive "
                         f"multiple of {FRAME_SAMPLES} samples (one 40 ms motion frame)")
    if state.shape != (len(audio), size):
        raise ValueError(f"encoder states have shape {state.shape}, need ({len(audio)}, {size})")


# --- availability and the automatic choice -------------------------------------------------------------

# CUDA driver API result codes worth naming (cuda.h); others are reported by number
_CUDA_ERRORS = {100: "CUDA_ERROR_NO_DEVICE", 35: "CUDA_ERROR_INSUFFICIENT_DRIVER", 3: "CUDA_ERROR_NOT_INITIALIZED",
                999: "CUDA_ERROR_UNKNOWN", 101: "CUDA_ERROR_INVALID_DEVICE", 304: "CUDA_ERROR_OPERATING_SYSTEM"}
LIBCUDA = "libcuda.so.1"


def load_libcuda():
    """The NVIDIA driver's CUDA library (what pycuda, TensorRT and every CUDA runtime load);
    OSError when this machine has no NVIDIA driver (or the container does not expose it)."""
    return ctypes.CDLL(LIBCUDA)


def cuda_driver_problem() -> str | None:
    """None when the CUDA driver loads and sees a device, else why not; asks the driver itself
    (ctypes), so a missing driver is never mistaken for a missing Python package."""
    try:
        lib = load_libcuda()
    except OSError as exc:
        return f"the NVIDIA driver library {LIBCUDA} cannot be loaded ({exc}): no NVIDIA driver on this machine"
    rc = lib.cuInit(0)
    if rc != 0:
        return f"the CUDA driver does not initialise (cuInit: {_CUDA_ERRORS.get(rc, f'error {rc}')})"
    count = ctypes.c_int(0)
    rc = lib.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0 or count.value == 0:
        return "the CUDA driver sees no device"
    return None


def cuda_available() -> bool:
    """A CUDA device is usable here: the driver sees one (or PyTorch does)."""
    return cuda_driver_problem() is None or torch.cuda.is_available()


def tensorrt_problems() -> list[str]:
    """What keeps the TensorRT backend from running here, one entry per missing piece: the
    tensorrt package, pycuda, the NVIDIA driver (each named for what it is; README "GPU install"
    says how to get it)."""
    problems = []
    if importlib.util.find_spec("tensorrt") is None:
        problems.append("the tensorrt Python package is not installed (its wheels come from NVIDIA's package index: "
                        "pip install tensorrt, see README \"GPU install\")")
    else:
        try:
            import tensorrt  # noqa: F401
        except (ImportError, OSError) as exc:
            problems.append(f"the tensorrt package is installed but does not load ({exc})")
    pycuda_installed = importlib.util.find_spec("pycuda") is not None
    if not pycuda_installed:
        problems.append("pycuda is not installed (pip install pycuda: it builds from source against the CUDA "
                        "toolkit, see README \"GPU install\")")
    driver = cuda_driver_problem()
    if driver is not None:
        problems.append(driver)
    elif pycuda_installed:
        try:
            import pycuda.driver  # noqa: F401
        except ImportError as exc:  # e.g. built against another CUDA version than this driver's
            problems.append(f"pycuda is installed but pycuda.driver does not load ({exc}); reinstall it against "
                            "this machine's CUDA toolkit")
    return problems


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
        problems = tensorrt_problems()
        return "; ".join(problems) if problems else None
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


def check_backend(backend: str, precision: str) -> None:
    """A UserError unless ``backend`` (concrete, not "auto") runs ``precision`` here."""
    if backend not in BACKEND_NAMES:
        raise UserError(f"unknown backend {backend!r} (choose from {', '.join(BACKEND_NAMES)})")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision not in BACKEND_PRECISIONS[backend]:
        raise UserError(f"the {backend} backend runs {'/'.join(BACKEND_PRECISIONS[backend])}, not {precision}")
    why = backend_unavailable(backend)
    if why is not None:
        raise UserError(f"backend {backend!r} cannot run here: {why}")
