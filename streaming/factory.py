"""Build a streaming session for a loaded model directory on an engine backend (PyTorch, ONNX
Runtime, TensorRT: engines/networks.py), what the backend needs made on first use
(export/prepare.py) — alone (its own network calls) or on a batching scheduler that serves every
session of a process with shared calls (``make_scheduler``, ``build_session(..., scheduler=)``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np
import torch

from diffposetalk.model import Guidance
from diffposetalk.model_dir import LoadedModel
from diffposetalk.sampler import Sampler
from diffposetalk.units import FRAME_SAMPLES
from engines.networks import BACKEND_NAMES, Networks, TorchNetworks, choose_backend
from export.prepare import open_networks
from streaming.motion import CoefDecoder, NetworkAudioFeatures, NetworkStreamingFeatures, SamplingMotionEngine
from streaming.scheduler import BatchScheduler
from streaming.session import StepInfo, StreamConfig, StreamSession

log = logging.getLogger("dpt_live.stream")


def open_session(loaded: LoadedModel, sampler: Sampler, guidance: Guidance,
                 config: StreamConfig | None = None, style: np.ndarray | torch.Tensor | None = None,
                 shape_raw: np.ndarray | torch.Tensor | None = None,
                 on_step: Callable[[StepInfo], None] | None = None, networks: Networks | None = None,
                 scheduler: BatchScheduler | None = None, **kwargs) -> StreamSession:
    """shape_raw: FLAME shape (100,) (default: the mean face); style: (d_style,) or None;
    networks: the engine backend to run the networks on (default: the model itself, PyTorch);
    scheduler: run them in the scheduler's batched calls instead (its model and runtime)."""
    config = config or StreamConfig()
    model, stats = loaded.model, loaded.stats
    shape_raw = torch.zeros(100) if shape_raw is None else torch.as_tensor(shape_raw, dtype=torch.float32)
    shape = (shape_raw.to(model.device) - stats["shape_mean"]) / stats["shape_std"]
    spec = config.spec()
    spec.check_model(loaded.config.n_motions)
    stream = config.uses_stream_encoder(loaded.config.stream_encoder is not None)
    chunks = (spec.new_frames * FRAME_SAMPLES, spec.hop * FRAME_SAMPLES)  # a streaming encoder's first / later
    if config.catch_up_frames():  # ... and a catching-up step's
        chunks += ((spec.hop + config.catch_up_frames()) * FRAME_SAMPLES,)
    link = None
    if scheduler is not None:
        if scheduler.model is not model or (networks is not None and networks is not scheduler.networks):
            raise ValueError("the scheduler serves another model or runtime than the one asked for")
        networks = scheduler.networks
        audio, motion, link = scheduler.engines(spec.window_samples, sampler, guidance, shape, config.seed,
                                                stream_chunks=chunks if stream else None)
    else:
        networks = TorchNetworks(model) if networks is None else networks
        audio = (NetworkStreamingFeatures(networks, spec.window_samples, *chunks) if stream
                 else NetworkAudioFeatures(networks, spec.window_samples))
        motion = SamplingMotionEngine(model, sampler, guidance, shape, config.seed, networks)
    decoder = CoefDecoder(stats, loaded.config.head_pose)
    style_np = None if style is None else np.asarray(torch.as_tensor(style).cpu(), dtype=np.float32)
    session = StreamSession(audio, motion, decoder, config, style_np, on_step=on_step, **kwargs)
    if link is not None:
        link.bind(session)  # from here on its steps carry deadlines
    session.backend = networks.describe()  # for reports
    session.batched = scheduler is not None  # its network calls are shared with other sessions
    session.audio_encoder = "stream" if stream else "window"  # for reports
    return session


BACKENDS = ("auto", *BACKEND_NAMES)


def build_session(loaded: LoadedModel, sampler: Sampler, guidance: Guidance,
                  config: StreamConfig | None = None, style=None, shape_raw=None,
                  on_step: Callable[[StepInfo], None] | None = None, backend: str = "torch",
                  precision: str = "fp32", threads: int | None = None,
                  scheduler: BatchScheduler | None = None, **kwargs) -> StreamSession:
    """A streaming session on the chosen engine backend (``--backend`` of stream/serve/bench).
    Every caller builds sessions through here so that backends are chosen in one place.
    precision: fp32, or int8 (onnxruntime CPU) / fp16 (tensorrt); threads: ONNX Runtime intra-op
    threads (default 1). "auto" falls back to torch (with a warning) when the chosen backend
    cannot be prepared, e.g. an export that fails its parity check. scheduler: a batching
    scheduler (:func:`make_scheduler`) whose runtime the session's networks run on, in calls
    shared with its other sessions (backend, precision and threads are then the scheduler's)."""
    if scheduler is not None:
        return open_session(loaded, sampler, guidance, config, style, shape_raw, on_step=on_step,
                            scheduler=scheduler, **kwargs)
    networks = open_backend(loaded, backend, precision, threads)
    return open_session(loaded, sampler, guidance, config, style, shape_raw, on_step=on_step, networks=networks,
                        **kwargs)


def open_backend(loaded: LoadedModel, backend: str = "torch", precision: str = "fp32",
                 threads: int | None = None) -> Networks:
    """The networks ``backend`` (or "auto") names, as build_session chooses them."""
    from diffposetalk.errors import UserError

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    name = choose_backend(backend, precision)
    try:
        networks = open_networks(loaded, name, precision, threads)
    except Exception as exc:  # auto promises a working session: any failure falls back to torch
        if backend != "auto":
            raise
        log.warning("backend auto: %s unusable (%s); using torch", name, exc)
        networks = TorchNetworks(loaded.model)
    return networks


def make_scheduler(loaded: LoadedModel, backend: str = "torch", precision: str = "fp32", threads: int | None = None,
                   workers: int | None = None, **options) -> BatchScheduler:
    """A batching scheduler on the backend build_session would choose; options: BatchScheduler's
    (max_batch, gather_ms, latency_budget_ms, shed, margin_ms, max_call_ms). workers: threads
    running calls, default one per core up to 2 on a CPU runtime (an audio call and a motion call
    at once), 1 on a GPU (one stream). Close it when its sessions are done."""
    networks = open_backend(loaded, backend, precision, threads)
    if workers is None:
        workers = 1 if runs_on_gpu(networks) else max(1, min(2, os.cpu_count() or 1))
    return BatchScheduler(loaded.model, networks, workers=workers, **options)


def runs_on_gpu(networks: Networks) -> bool:
    if networks.name == "tensorrt":
        return True
    if networks.name == "onnxruntime":
        return any(p != "CPUExecutionProvider" for p in getattr(networks, "providers", ()))
    model = getattr(networks, "model", None)
    return model is not None and model.device.type != "cpu"
