"""ONNX Runtime backend: the exported graphs of a model (export/onnx_export.py) in ORT sessions.

Graphs are asked of an artefact lookup (engines/artefacts.py) when first needed: the denoiser
when the networks open, an audio window length the first time it is used, the style encoder at
the first style call. The plain lookup finds exported graphs only; export/prepare.py's exports
(and quantises) missing ones, so ``--backend onnxruntime`` works on any model directory.

CPU sessions use ``intra_op_num_threads`` = 1 by default: on a shared 2-core machine a second
thread mostly waits for a busy core (docs/EXPORT.md has the measurements). The CUDA execution
provider is used when onnxruntime-gpu sees a device; DPT_LIVE_ORT_PROVIDERS (comma-separated, e.g.
``TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider``) overrides the list."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from engines.artefacts import ArtefactLookup
from engines.networks import Networks, check_stream_rows, check_window, check_windows, denoiser_input_names

log = logging.getLogger("dpt_live.backends")


def default_providers() -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    env = os.environ.get("DPT_LIVE_ORT_PROVIDERS")
    if env:
        wanted = [p.strip() for p in env.split(",") if p.strip()]
        missing = [p for p in wanted if p not in avail]
        if missing:
            raise UserError(f"DPT_LIVE_ORT_PROVIDERS asks for {missing}, this onnxruntime has {avail}")
        return wanted
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


def make_session(path: Path, threads: int = 1, providers: list[str] | None = None,
                 fixed_dims: dict[str, int] | None = None):
    """``fixed_dims``: symbolic input dimensions pinned for this session (e.g. the batch axis N = 1
    of a session's own streaming-encoder calls): ORT then folds the graph's shape arithmetic away."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting worker threads: on a shared machine they steal the core the next step needs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    for name, value in (fixed_dims or {}).items():
        so.add_free_dimension_override_by_name(name, int(value))
    requested = providers or default_providers()
    try:
        session = ort.InferenceSession(str(path), so, providers=requested)
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise UserError(f"cannot load ONNX graph {path}: {exc}") from exc
    check_providers(session, requested, path)
    return session


def check_providers(session, requested: list[str], path: Path) -> list[str]:
    """The providers ``session`` really got; a warning when a requested GPU provider is not among
    them (ORT falls back to the next provider, down to CPU, without an error: a CPU-only
    onnxruntime, a CUDA/cuDNN/TensorRT library it cannot load, no device)."""
    got = list(session.get_providers())
    lost = [p for p in requested if p != "CPUExecutionProvider" and p not in got]
    if lost:
        log.warning("onnxruntime: %s asked for %s but runs on %s (the GPU provider did not load: GPU use needs "
                    "onnxruntime-gpu instead of onnxruntime, with its CUDA/cuDNN libraries; `dpt-live doctor` checks)",
                    Path(path).name, ",".join(lost), ",".join(got))
    else:
        log.debug("onnxruntime: %s runs on %s", Path(path).name, ",".join(got))
    return got


class OrtNetworks(Networks):
    name = "onnxruntime"

    def __init__(self, artefacts: ArtefactLookup, cfg, precision: str = "fp32", threads: int | None = None,
                 providers: list[str] | None = None):
        """``artefacts`` finds (or makes) the graphs of one model at ``precision``."""
        if precision not in ("fp32", "int8"):
            raise UserError(f"the onnxruntime backend runs fp32 or int8, not {precision}")
        self.artefacts, self.cfg, self.precision = artefacts, cfg, precision
        self.threads = threads or 1
        self.providers = providers or default_providers()
        self.input_names = denoiser_input_names(cfg)
        self._audio: dict[int, object] = {}
        self._stream: dict[tuple[int, bool], object] = {}  # streaming encoder graphs by (chunk length, batch 1)
        self._denoiser = self._session("denoiser")
        self._style = None
        log.info("onnxruntime %s: %s, %d intra-op thread(s), graphs in %s", precision,
                 ",".join(self._denoiser.get_providers()), self.threads, artefacts.onnx_dir)

    def _session(self, graph: str, window_samples: int | None = None, precision: str | None = None,
                 fixed_dims: dict[str, int] | None = None):
        path = self.artefacts.onnx(graph, precision or self.precision, window_samples)
        return make_session(path, self.threads, self.providers, fixed_dims)

    # --- the three calls --------------------------------------------------------------------------------
    def audio_session(self, window_samples: int):
        sess = self._audio.get(window_samples)
        if sess is None:
            sess = self._audio[window_samples] = self._session("audio", window_samples)
        return sess

    def audio_features(self, audio):
        check_window(audio)
        return self.audio_features_batch(audio[None])[0]

    def audio_features_batch(self, audio):
        """One run of the audio graph over B windows (its batch axis is dynamic)."""
        check_windows(audio)
        x = np.ascontiguousarray(audio, dtype=np.float32)
        return self.audio_session(x.shape[1]).run(None, {"audio": x})[0]

    def stream_session(self, chunk_samples: int, rows: int | None = None):
        """The streaming encoder's graph for chunks of ``chunk_samples``; ``rows`` = 1 (a session's
        own call) gets a session with the batch axis pinned to 1: every shape is then static and ORT
        folds the shape arithmetic of the state's unpacking and the attention masks (273 -> 154
        nodes), what dominates a call this small. Other row counts share the dynamic-batch one."""
        key = (chunk_samples, rows == 1)
        sess = self._stream.get(key)
        if sess is None:
            sess = self._stream[key] = self._session("stream", chunk_samples,
                                                     fixed_dims={"N": 1} if rows == 1 else None)
        return sess

    def stream_audio_batch(self, audio, state):
        """One run of the streaming encoder's graph over B sessions' chunks and state rows."""
        check_stream_rows(audio, state, self.stream_state_size())
        x = np.ascontiguousarray(audio, dtype=np.float32)
        final, prov, new = self.stream_session(x.shape[1], x.shape[0]).run(
            None, {"audio": x, "state": np.ascontiguousarray(state, dtype=np.float32)})
        return final, prov, new

    def denoise(self, inputs):
        return self._denoiser.run(None, {n: inputs[n] for n in self.input_names})[0]

    def style(self, motion):
        if self.cfg.style_encoder is None or not self.cfg.use_style:
            raise ValueError("this model has no style encoder")
        if self._style is None:
            # the style encoder runs once per style, not per step: kept fp32 at every precision
            self._style = self._session("style", precision="fp32")
        return self._style.run(None, {"motion": np.ascontiguousarray(motion, dtype=np.float32)})[0]
