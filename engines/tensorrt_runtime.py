"""TensorRT backend: serialized plans (export/tensorrt_build.py) run with pycuda.

- Plans are asked of an artefact lookup (engines/artefacts.py) for this GPU and TensorRT version;
  export/prepare.py's lookup builds missing ones on first use.
- ``pycuda.autoprimaryctx``: TensorRT, PyTorch and pycuda share the device's primary context;
  a thread that has no current context (a server's worker thread) pushes it around each call.
- Preallocated device buffers and pinned host buffers per input shape: a call is copy in ->
  enqueue -> copy out -> synchronise, with no allocation.
- The denoiser has a fixed shape per batch size (1..k), so each batch size gets its own
  execution context, and its enqueue is captured once into a CUDA graph and replayed; an engine
  whose capture fails runs with plain ``execute_async_v3``.
- TensorRT 10 and 11 share this API (set_input_shape, set_tensor_address, execute_async_v3)."""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from engines.artefacts import ArtefactLookup
from engines.networks import Networks, check_window, denoiser_input_names

log = logging.getLogger("dpt_live.backends")

_LOGGER = None


def trt_logger():
    global _LOGGER
    import tensorrt as trt

    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def cuda_driver():
    """pycuda's driver module; importing pycuda.autoprimaryctx retains the device's primary
    context and makes it current in the importing thread."""
    import pycuda.autoprimaryctx  # noqa: F401
    import pycuda.driver as cuda

    return cuda


def primary_context():
    import pycuda.autoprimaryctx as apc

    return apc.context


_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "BF16": None, "INT8": np.int8, "INT32": np.int32,
           "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}


def numpy_dtype(trt_dtype) -> np.dtype:
    """numpy dtype of a TensorRT tensor type (trt.nptype where the bindings still have it)."""
    import tensorrt as trt

    if hasattr(trt, "nptype"):
        return np.dtype(trt.nptype(trt_dtype))
    np_type = _DTYPES.get(getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1])
    if np_type is None:
        raise ValueError(f"TensorRT tensor type {trt_dtype} has no numpy equivalent for I/O")
    return np.dtype(np_type)


class _Binding:
    """Buffers, execution context and (optionally) CUDA graph for one set of input shapes."""

    def __init__(self, engine, shapes: dict[str, tuple], cuda, use_graph: bool):
        import tensorrt as trt

        self.cuda = cuda
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = cuda.Stream()
        self.inputs, self.outputs = [], []
        self.host, self.device = {}, {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
                if not self.context.set_input_shape(name, shapes[name]):
                    raise ValueError(f"TensorRT engine refuses shape {shapes[name]} for input {name!r}")
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if name not in self.inputs:
                self.outputs.append(name)
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = numpy_dtype(engine.get_tensor_dtype(name))
            self.host[name] = cuda.pagelocked_empty(shape, dtype)
            self.device[name] = cuda.mem_alloc(max(self.host[name].nbytes, 1))
            self.context.set_tensor_address(name, int(self.device[name]))
        self.graph = None
        self._enqueue()  # first enqueue outside capture: TensorRT finishes lazy set-up here
        self.stream.synchronize()
        if use_graph:
            self._capture()

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def _capture(self) -> None:
        try:
            self.stream.begin_capture()
            try:
                self._enqueue()
            finally:
                graph = self.stream.end_capture()
            self.graph = graph.instantiate()
        except Exception as exc:  # capture is an optimisation: a failure costs only launch overhead
            log.info("TensorRT: CUDA graph capture failed (%s); plain enqueue", exc)
            self.graph = None

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        cuda = self.cuda
        for name in self.inputs:
            np.copyto(self.host[name], feeds[name], casting="same_kind")
            cuda.memcpy_htod_async(self.device[name], self.host[name], self.stream)
        if self.graph is not None:
            try:
                self.graph.launch(self.stream)
            except TypeError:  # pycuda versions whose launch() takes no stream use the default one
                self.graph.launch()
        else:
            self._enqueue()
        out = self.outputs[0]
        cuda.memcpy_dtoh_async(self.host[out], self.device[out], self.stream)
        self.stream.synchronize()
        return np.array(self.host[out], dtype=np.float32)


class TrtEngine:
    """One deserialized plan; bindings (context + buffers + graph) per distinct input shapes."""

    def __init__(self, plan_path: str | Path, use_graph: bool = True):
        import tensorrt as trt

        self.cuda = cuda_driver()
        self.ctx = primary_context()
        self.path = Path(plan_path)
        runtime = trt.Runtime(trt_logger())
        with self._context():
            self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise UserError(f"{self.path}: TensorRT cannot load this plan (built for another TensorRT version "
                            "or GPU?); delete it to rebuild")
        self.runtime = runtime  # keep alive as long as the engine
        self.use_graph = use_graph
        self._bindings: dict[tuple, _Binding] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _context(self):
        pushed = False
        try:
            current = self.cuda.Context.get_current()
        except self.cuda.LogicError:
            current = None
        if current is None or current.handle != self.ctx.handle:  # e.g. a server's worker thread
            self.ctx.push()
            pushed = True
        try:
            yield
        finally:
            if pushed:
                self.cuda.Context.pop()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        key = tuple((n, tuple(v.shape)) for n, v in sorted(feeds.items()))
        with self._lock, self._context():
            binding = self._bindings.get(key)
            if binding is None:
                binding = _Binding(self.engine, {n: tuple(v.shape) for n, v in feeds.items()}, self.cuda,
                                   self.use_graph)
                self._bindings[key] = binding
            return binding.run(feeds)


def gpu_identity() -> tuple[str, tuple[int, int], str]:
    """(GPU name, compute capability, TensorRT version) of device 0: what a plan is built for."""
    import tensorrt as trt

    dev = cuda_driver().Device(0)
    return dev.name(), tuple(dev.compute_capability()), trt.__version__


class TrtNetworks(Networks):
    name = "tensorrt"

    def __init__(self, artefacts: ArtefactLookup, cfg, precision: str = "fp32"):
        """``artefacts`` finds (or builds) the plans of one model for this GPU at ``precision``."""
        if precision not in ("fp32", "fp16"):
            raise UserError(f"the tensorrt backend runs fp32 or fp16, not {precision}")
        self.artefacts, self.cfg, self.precision = artefacts, cfg, precision
        self.gpu = gpu_identity()
        self.input_names = denoiser_input_names(cfg)
        self._audio: dict[int, TrtEngine] = {}
        self._denoiser = self._engine("denoiser")
        self._style = None
        log.info("tensorrt %s: plans for model %s", precision, artefacts.key)

    def _engine(self, graph: str, window_samples: int | None = None, precision: str | None = None) -> TrtEngine:
        plan = self.artefacts.plan(graph, precision or self.precision, window_samples, self.gpu)
        return TrtEngine(plan, use_graph=graph == "denoiser")

    def audio_features(self, audio):
        check_window(audio)
        eng = self._audio.get(len(audio))
        if eng is None:
            eng = self._audio[len(audio)] = self._engine("audio", len(audio))
        return eng.run({"audio": np.ascontiguousarray(audio, dtype=np.float32)[None]})[0]

    def denoise(self, inputs):
        return self._denoiser.run({n: inputs[n] for n in self.input_names})

    def style(self, motion):
        if self.cfg.style_encoder is None or not self.cfg.use_style:
            raise ValueError("this model has no style encoder")
        if self._style is None:
            self._style = self._engine("style", precision="fp32")  # once per style: fp32 always
        return self._style.run({"motion": np.ascontiguousarray(motion, dtype=np.float32)})
