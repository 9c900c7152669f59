"""Make sure what a backend needs exists, then open it.

:class:`OnDemandArtefacts` is the artefact lookup of engines/artefacts.py that makes what is
missing when a runtime asks for it: ONNX graphs are exported (an audio window length the first
time it is used), int8 graphs quantised, TensorRT plans built and checked. So ``--backend
onnxruntime`` / ``tensorrt`` work on any model directory without an explicit export step.
:func:`open_networks` opens a backend by name on such a lookup, one set of networks per model
and settings in a process; :func:`build_plans` is `dpt-live export tensorrt`."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from diffposetalk.errors import UserError
from engines.artefacts import ArtefactLookup, cache_root, model_hash, plan_complete, record_current
from engines.networks import Networks, TorchNetworks, check_backend
from engines.onnx_runtime import OrtNetworks
from engines.tensorrt_runtime import TrtNetworks, gpu_identity
from export import onnx_export as ox
from export.quantize import quantize_graph
from export.tensorrt_build import build_checked_plan

log = logging.getLogger("dpt_live.backends")


class OnDemandArtefacts(ArtefactLookup):
    """A model's artefacts, made when first asked for. ``tolerance``: the largest difference of a
    new TensorRT plan to PyTorch accepted (default: by precision)."""

    def __init__(self, loaded, onnx_dir: str | Path | None = None, plan_root: str | Path | None = None,
                 tolerance: float | None = None):
        super().__init__(model_hash(loaded.model), onnx_dir, plan_root)
        self.loaded, self.tolerance = loaded, tolerance
        try:
            self.onnx_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the ONNX cache {self.onnx_dir} ({exc}); set DPT_LIVE_CACHE") from exc
        # two threads asking for the same missing file must not both make it
        self._lock = threading.RLock()

    def onnx(self, graph: str, precision: str = "fp32", window_samples: int | None = None) -> Path:
        """The graph file, exported first when missing or out of date (a fixed-batch graph of an
        earlier version); an int8 graph is quantised from the fp32 one when missing or older."""
        with self._lock:
            if precision != "int8":
                return self._exported(graph, precision, window_samples)
            src = self._exported(graph, "fp32", window_samples)
            dst = self.find_onnx(graph, "int8", window_samples)
            return dst if dst is not None else quantize_graph(src, self.onnx_path(graph, "int8", window_samples))

    def _exported(self, graph: str, precision: str, window_samples: int | None) -> Path:
        path = self.onnx_path(graph, precision, window_samples)
        rec = self.record(path)  # another model's file raises here: never overwritten
        if rec is not None and record_current(rec):
            return path
        log.info("exporting %s to %s (%s)", path.name, self.onnx_dir,
                 "first use of this model/shape" if rec is None else "its cached graph has a fixed batch")
        model = self.loaded.model
        if graph == "audio":
            ox.export_audio(model, self.onnx_dir, window_samples, key=self.key, precision=precision)
        elif graph == "stream":
            ox.export_stream_audio(model, self.onnx_dir, window_samples, key=self.key, precision=precision)
        elif graph == "denoiser":
            ox.export_denoiser(model, self.onnx_dir, key=self.key, precision=precision)
        elif precision == "fp32":
            ox.export_style(model, self.onnx_dir, key=self.key)
        else:
            raise ValueError("the style graph is exported in fp32 only (it runs once per style)")
        return path

    def plan(self, graph: str, precision: str, window_samples: int | None, gpu: tuple[str, tuple, str]) -> Path:
        """The TensorRT plan, built (and checked against PyTorch) when missing."""
        with self._lock:
            onnx = self.onnx(graph, precision, window_samples)
            record = self.record(onnx)
            plan = self.plan_path(onnx, record, precision, gpu)
            if not plan_complete(plan):
                build_checked_plan(self.loaded, onnx, record, plan, graph, precision, window_samples, gpu,
                                   self.tolerance)
            return plan


def build_plans(loaded, windows: list[int], precision: str, tolerance: float | None,
                stream_chunks: list[int] | None = None) -> list[str]:
    """Every plan a stream needs (the audio encoder at each window length, the streaming encoder
    at each chunk length when the model has one, the denoiser, the style encoder in fp32), built
    where missing; one summary line per plan."""
    artefacts = OnDemandArtefacts(loaded, tolerance=tolerance)
    gpu = gpu_identity()
    lines = []
    jobs = [("audio", w, precision) for w in windows] + [("denoiser", None, precision)]
    if loaded.model.stream_encoder is not None:
        jobs += [("stream", c, precision) for c in stream_chunks or []]
    if loaded.model.style_encoder is not None:
        jobs.append(("style", None, "fp32"))
    for graph, window, prec in jobs:
        t0 = time.perf_counter()
        plan = artefacts.plan(graph, prec, window, gpu)
        meta = json.loads(Path(str(plan) + ".json").read_text())
        lines.append(f"{plan.name:<28} {prec}, max |trt - torch| = {meta['max_abs_diff']:.2e} (outputs up to "
                     f"{meta['ref_max_abs']:.2f}), {time.perf_counter() - t0:.0f} s -> {plan.parent}")
    return lines


def open_networks(loaded, backend: str, precision: str = "fp32", threads: int | None = None,
                  cache_dir: str | Path | None = None) -> Networks:
    """The networks of a loaded model directory on a concrete backend (not "auto"), with what the
    backend needs made on first use. ``cache_dir``: where the ONNX graphs are (default: the
    model's directory in the cache)."""
    check_backend(backend, precision)
    if backend == "torch":
        return TorchNetworks(loaded.model)
    # one set of sessions/engines per model and settings, shared by every stream of this process
    # (a server's sessions): a full-size HuBERT graph is ~400 MB, and ORT/TRT runs are thread-safe
    key = (backend, model_hash(loaded.model), precision, threads or 1, str(cache_dir or cache_root()))
    with _NETWORKS_LOCK:
        nets = _NETWORKS.get(key)
        if nets is None:
            artefacts = OnDemandArtefacts(loaded, cache_dir)
            if backend == "onnxruntime":
                nets = OrtNetworks(artefacts, loaded.config, precision, threads)
            else:
                nets = TrtNetworks(artefacts, loaded.config, precision)
            _NETWORKS[key] = nets
    return nets


_NETWORKS: dict[tuple, Networks] = {}
_NETWORKS_LOCK = threading.Lock()
