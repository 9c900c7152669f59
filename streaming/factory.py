"""Build a streaming session for a loaded model directory with the PyTorch backend."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from engines.model import Guidance
from engines.model_dir import LoadedModel
from engines.sampler import Sampler
from streaming.backends import CoefDecoder, TorchAudioFeatures, TorchMotionEngine
from streaming.session import StepInfo, StreamConfig, StreamSession


def torch_session(loaded: LoadedModel, sampler: Sampler, guidance: Guidance,
                  config: StreamConfig | None = None, style: np.ndarray | torch.Tensor | None = None,
                  shape_raw: np.ndarray | torch.Tensor | None = None,
                  on_step: Callable[[StepInfo], None] | None = None, **kwargs) -> StreamSession:
    """shape_raw: FLAME shape (100,) (default: the mean face); style: (d_style,) or None."""
    config = config or StreamConfig()
    model, stats = loaded.model, loaded.stats
    shape_raw = torch.zeros(100) if shape_raw is None else torch.as_tensor(shape_raw, dtype=torch.float32)
    shape = (shape_raw.to(model.device) - stats["shape_mean"]) / stats["shape_std"]
    spec = config.spec()
    spec.check_model(loaded.config.n_motions)
    audio = TorchAudioFeatures(model, spec.window_samples)
    motion = TorchMotionEngine(model, sampler, guidance, shape, config.seed)
    decoder = CoefDecoder(stats, loaded.config.head_pose)
    style_np = None if style is None else np.asarray(torch.as_tensor(style).cpu(), dtype=np.float32)
    return StreamSession(audio, motion, decoder, config, style_np, on_step=on_step, **kwargs)


BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


def build_session(loaded: LoadedModel, sampler: Sampler, guidance: Guidance,
                  config: StreamConfig | None = None, style=None, shape_raw=None,
                  on_step: Callable[[StepInfo], None] | None = None, backend: str = "torch",
                  **kwargs) -> StreamSession:
    """A streaming session on the chosen engine backend (``--backend`` of stream/serve/bench).
    Every caller builds sessions through here so that backends are chosen in one place."""
    from dpt_live.errors import UserError

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend in ("auto", "torch"):
        return torch_session(loaded, sampler, guidance, config, style, shape_raw, on_step=on_step, **kwargs)
    raise UserError(f"backend {backend!r} is not available in this build")
