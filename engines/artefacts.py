"""Where a model's exported artefacts live, and how a runtime finds them.

- The cache: ``<cache>/onnx/<model hash>/`` holds a model's ONNX graphs, ``<cache>/tensorrt/<key>/``
  its TensorRT plans (key: :func:`trt_cache_key`); ``<cache>`` is $DPT_LIVE_CACHE or
  ~/.cache/dpt-live.
- Graph files: ``audio_<S>.onnx`` (one per audio window length S), ``stream_audio_<S>.onnx``
  (the streaming audio encoder at a chunk of S new samples, state in and out), ``denoiser.onnx``,
  ``style.onnx``, and their ``.fp16`` / ``.int8`` variants, each with a ``.json`` sidecar
  (:class:`ExportRecord`) naming the model hash it was exported from and its input shapes. Every
  graph has a dynamic batch axis ("N"); a graph recorded with a fixed batch (audio graphs exported
  before the batching scheduler) is out of date and exported again (:func:`record_current`).
- :class:`ArtefactLookup`: what a runtime asks for "the ONNX graph / TensorRT plan of graph G at
  window W and precision P". It only finds existing files of this model; a missing one is a
  UserError naming the ``dpt-live export`` command that makes it. export/prepare.py's subclass
  makes missing ones instead (export, int8 quantisation, plan build), on first use."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffposetalk.errors import UserError
from diffposetalk.model import DiffPoseTalk
from diffposetalk.units import FRAME_SAMPLES

OPSET = 17  # graphs are exported at: LayerNormalization is a native op from 17 on (one FP32 op in TensorRT)
DENOISER_FILE = "denoiser.onnx"
STYLE_FILE = "style.onnx"
GRAPHS = ("audio", "stream", "denoiser", "style")  # stream: the streaming audio encoder at one chunk length

# --- the cache -------------------------------------------------------------------------------------


# how plans lay out their optimisation profiles (export/tensorrt_build.py): part of a plan's key, so
# a plan built with another layout is rebuilt rather than run with the wrong profiles
PLAN_LAYOUT = "batch-buckets-1"


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


# --- graph files and their sidecars ----------------------------------------------------------------

def graph_file(base: str, precision: str = "fp32") -> str:
    """denoiser.onnx -> denoiser.fp16.onnx etc."""
    return base if precision == "fp32" else base[: -len(".onnx")] + f".{precision}.onnx"


def audio_file(window_samples: int, precision: str = "fp32") -> str:
    return graph_file(f"audio_{window_samples}.onnx", precision)


def stream_file(chunk_samples: int, precision: str = "fp32") -> str:
    return graph_file(f"stream_audio_{chunk_samples}.onnx", precision)


def graph_path_name(graph: str, precision: str = "fp32", window_samples: int | None = None) -> str:
    """The file name of ``graph`` ("audio" at ``window_samples``, "stream" at a chunk of
    ``window_samples``, "denoiser", "style")."""
    if graph in ("audio", "stream"):
        if window_samples is None or window_samples <= 0 or window_samples % FRAME_SAMPLES:
            raise ValueError(f"the {graph} graph needs a window of whole 40 ms frames, got {window_samples}")
        return (audio_file if graph == "audio" else stream_file)(window_samples, precision)
    if graph == "denoiser":
        return graph_file(DENOISER_FILE, precision)
    if graph == "style":
        return graph_file(STYLE_FILE, precision)
    raise ValueError(f"unknown graph {graph!r} (one of {', '.join(GRAPHS)})")


@dataclass
class ExportRecord:
    graph: str  # "audio", "denoiser", "style"
    file: str
    model_hash: str
    inputs: dict[str, list]  # name -> shape (batch "N" where dynamic)
    max_abs_diff: float | None  # vs PyTorch on the parity inputs (None: not checked here)
    ref_max_abs: float | None  # largest |output| of PyTorch there (scale of the difference)
    tolerance: float
    seconds: float
    precision: str = "fp32"
    opset: int = OPSET
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.file:<24} max |onnx - torch| = {self.max_abs_diff:.2e} (outputs up to "
                f"{self.ref_max_abs:.2f}, tolerance {self.tolerance:g}), {self.seconds:.1f} s")


def record_current(record: ExportRecord) -> bool:
    """Whether an exported graph has the interface this version runs: a dynamic batch on every
    input (an audio graph exported at a fixed batch of 1 cannot serve a batch of sessions)."""
    if record.graph == "stream" and "peek" not in record.extra:
        return False  # a streaming-encoder graph from before its silent peek rows
    return bool(record.inputs) and all(shape and shape[0] == "N" for shape in record.inputs.values())


def read_record(path: Path) -> ExportRecord | None:
    side = Path(str(path) + ".json")
    if not (path.is_file() and side.is_file()):
        return None
    try:
        return ExportRecord(**json.loads(side.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # unreadable sidecar: treated as not exported


# --- the lookup ------------------------------------------------------------------------------------

class ArtefactLookup:
    """The artefacts of one model: ONNX graphs in ``onnx_dir`` (default: the model's cache
    directory), TensorRT plans under ``plan_root``/tensorrt (default: the cache root). Finds
    existing files only."""

    def __init__(self, model_key: str, onnx_dir: str | Path | None = None, plan_root: str | Path | None = None):
        self.key = model_key
        self.default_dir = cache_root() / "onnx" / model_key
        self.onnx_dir = Path(onnx_dir) if onnx_dir is not None else self.default_dir
        self.plan_root = Path(plan_root) if plan_root is not None else cache_root()

    def onnx_path(self, graph: str, precision: str = "fp32", window_samples: int | None = None) -> Path:
        """Where the graph's file is (or would be)."""
        return self.onnx_dir / graph_path_name(graph, precision, window_samples)

    def record(self, path: Path) -> ExportRecord | None:
        """The sidecar of an exported file of this model; None when there is none. Another
        model's file is an error, never used or overwritten."""
        rec = read_record(path)
        if rec is not None and rec.model_hash != self.key:
            raise UserError(f"{path} was exported from another model (hash {rec.model_hash}, this model "
                            f"{self.key}); delete it or export again")
        return rec

    def find_onnx(self, graph: str, precision: str = "fp32", window_samples: int | None = None) -> Path | None:
        """The graph file when this model's is there and current, else None (an int8 graph older
        than its fp32 source was quantised from an earlier export, a graph with a fixed batch was
        exported by an earlier version: not current)."""
        path = self.onnx_path(graph, precision, window_samples)
        rec = self.record(path)
        if rec is None or not record_current(rec):
            return None
        src = self.onnx_path(graph, "fp32", window_samples)
        if precision == "int8" and src.is_file() and path.stat().st_mtime < src.stat().st_mtime:
            return None
        return path

    def onnx(self, graph: str, precision: str = "fp32", window_samples: int | None = None) -> Path:
        """The ONNX graph of ``graph`` at ``precision``."""
        path = self.find_onnx(graph, precision, window_samples)
        if path is None:
            raise UserError(f"{self.onnx_path(graph, precision, window_samples)} is missing or out of date: make it "
                            f"with `{self.export_command(graph, precision, window_samples)}`")
        return path

    def plan_path(self, onnx: Path, record: ExportRecord, precision: str, gpu: tuple[str, tuple, str]) -> Path:
        """Where the TensorRT plan built from ``onnx`` for ``gpu`` (name, compute capability,
        TensorRT version) is (or would be)."""
        name, cc, version = gpu
        key = trt_cache_key(name, cc, version, self.key, f"{onnx.name}:{record.inputs}:{PLAN_LAYOUT}", precision)
        return self.plan_root / "tensorrt" / key / (onnx.stem + ".plan")

    def plan(self, graph: str, precision: str, window_samples: int | None, gpu: tuple[str, tuple, str]) -> Path:
        """The TensorRT plan of ``graph`` at ``precision`` for this GPU and TensorRT version."""
        onnx = self.find_onnx(graph, precision, window_samples)
        plan = None if onnx is None else self.plan_path(onnx, self.record(onnx), precision, gpu)
        if plan is None or not plan_complete(plan):
            what = plan or f"nor its ONNX graph {self.onnx_path(graph, precision, window_samples)}"
            raise UserError(f"no TensorRT {precision} plan of the {graph} graph for this GPU and TensorRT version "
                            f"({what}): build it with "
                            f"`{self.export_command(graph, precision, window_samples, plan=True)}`")
        return plan

    def export_command(self, graph: str, precision: str, window_samples: int | None, plan: bool = False) -> str:
        """The `dpt-live export` command that makes this artefact."""
        window = f" --window-ms {window_samples // 16}" if graph == "audio" and window_samples else ""
        if graph == "stream" and window_samples:
            window = f" --stream-chunk-ms {window_samples // 16}"
        if plan or precision == "fp16":  # fp16 graphs exist for TensorRT only
            return f"dpt-live export tensorrt --model <model dir> --precision {precision}{window}"
        out = "" if self.onnx_dir == self.default_dir else f" -o {self.onnx_dir}"
        int8 = " --int8" if precision == "int8" else ""
        return f"dpt-live export onnx --model <model dir>{window}{int8}{out}"


def plan_complete(plan: Path) -> bool:
    """A plan counts once its sidecar (written after the parity check) is there too."""
    return plan.is_file() and Path(str(plan) + ".json").is_file()
