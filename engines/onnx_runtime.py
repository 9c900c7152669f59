"""ONNX Runtime backend: the exported graphs of a model (export/onnx_export.py) in ORT sessions.

Graphs are looked up in the model's cache directory (keyed by model hash, engines/backends.py) and
exported on demand when missing, so ``--backend onnxruntime`` works on any model directory; an
audio window length not exported yet is exported the first time it is asked for.

CPU sessions use ``intra_op_num_threads`` = 1 by default: on a shared 2-core machine a second
thread mostly waits for a busy core (docs/EXPORT.md has the measurements). The CUDA execution
provider is used when onnxruntime-gpu sees a device; DPT_LIVE_ORT_PROVIDERS (comma-separated, e.g.
``TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider``) overrides the list."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from engines.networks import Networks, check_window, denoiser_input_names, model_hash, onnx_cache_dir

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


def make_session(path: Path, threads: int = 1, providers: list[str] | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting worker threads: on a shared machine they steal the core the next step needs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=providers or default_providers())
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise UserError(f"cannot load ONNX graph {path}: {exc}") from exc


class OrtNetworks(Networks):
    name = "onnxruntime"

    def __init__(self, graph_dir: str | Path, cfg, precision: str = "fp32", threads: int | None = None,
                 providers: list[str] | None = None, model=None, key: str | None = None):
        """graph_dir holds the exported graphs of one model; ``model`` (optional) lets missing ones
        be exported on demand."""
        from export.onnx_export import DENOISER_FILE, STYLE_FILE

        if precision not in ("fp32", "int8"):
            raise UserError(f"the onnxruntime backend runs fp32 or int8, not {precision}")
        self.dir, self.cfg, self.precision = Path(graph_dir), cfg, precision
        self.threads = threads or 1
        self.providers = providers or default_providers()
        self.model, self.key = model, key
        self.input_names = denoiser_input_names(cfg)
        self._lock = threading.Lock()  # on-demand export from two threads must not race
        self._audio: dict[int, object] = {}
        self._denoiser = self._session(DENOISER_FILE, self._export_denoiser)
        self._style = None
        self._style_file = STYLE_FILE
        log.info("onnxruntime %s: %s, %d intra-op thread(s), graphs in %s", precision,
                 ",".join(self.providers), self.threads, self.dir)

    @classmethod
    def for_model(cls, loaded, precision: str = "fp32", threads: int | None = None,
                  cache_dir: str | Path | None = None) -> OrtNetworks:
        key = model_hash(loaded.model)
        graph_dir = Path(cache_dir) if cache_dir is not None else onnx_cache_dir(loaded.model)
        try:
            graph_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the ONNX cache {graph_dir} ({exc}); set DPT_LIVE_CACHE") from exc
        return cls(graph_dir, loaded.config, precision, threads, model=loaded.model, key=key)

    # --- graphs ---------------------------------------------------------------------------------------
    def _file(self, fp32_file: str, export, precision: str | None = None) -> Path:
        """The graph file at ``precision`` (default: the backend's), exporting (and quantising) it
        first if needed."""
        from export.onnx_export import graph_file, read_record
        from export.quantize import quantize_graph

        src = self.dir / fp32_file
        with self._lock:
            rec = read_record(src)
            if rec is not None and self.key is not None and rec.model_hash != self.key:
                raise UserError(f"{src} was exported from another model (hash {rec.model_hash}, this model "
                                f"{self.key}); delete it or export again")
            if rec is None:
                if self.model is None:
                    raise UserError(f"{src} is missing: run `dpt-live export onnx` for this model first")
                log.info("exporting %s to %s (first use of this model/shape)", fp32_file, self.dir)
                export()
            if (precision or self.precision) == "fp32":
                return src
            dst = self.dir / graph_file(fp32_file, "int8")
            if not dst.is_file() or dst.stat().st_mtime < src.stat().st_mtime:
                quantize_graph(src, dst)
            return dst

    def _session(self, fp32_file: str, export):
        return make_session(self._file(fp32_file, export), self.threads, self.providers)

    def _export_denoiser(self):
        from export.onnx_export import export_denoiser

        export_denoiser(self.model, self.dir, key=self.key)

    # --- the three calls --------------------------------------------------------------------------------
    def audio_session(self, window_samples: int):
        sess = self._audio.get(window_samples)
        if sess is None:
            from export.onnx_export import audio_file, export_audio

            sess = self._session(audio_file(window_samples),
                                 lambda: export_audio(self.model, self.dir, window_samples, key=self.key))
            self._audio[window_samples] = sess
        return sess

    def audio_features(self, audio):
        check_window(audio)
        x = np.ascontiguousarray(audio, dtype=np.float32)[None]
        return self.audio_session(len(audio)).run(None, {"audio": x})[0][0]

    def denoise(self, inputs):
        return self._denoiser.run(None, {n: inputs[n] for n in self.input_names})[0]

    def style(self, motion):
        if self.cfg.style_encoder is None or not self.cfg.use_style:
            raise ValueError("this model has no style encoder")
        if self._style is None:
            from export.onnx_export import export_style

            # the style encoder runs once per style, not per step: kept fp32 at every precision
            path = self._file(self._style_file, lambda: export_style(self.model, self.dir, key=self.key), "fp32")
            self._style = make_session(path, self.threads, self.providers)
        return self._style.run(None, {"motion": np.ascontiguousarray(motion, dtype=np.float32)})[0]
