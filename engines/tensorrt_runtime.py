"""TensorRT backend: serialized plans (export/tensorrt_build.py) run with pycuda.

- Plans are asked of an artefact lookup (engines/artefacts.py) for this GPU and TensorRT version;
  export/prepare.py's lookup builds missing ones on first use.
- ``pycuda.autoprimaryctx``: TensorRT, PyTorch and pycuda share the device's primary context;
  a thread that has no current context (a server's worker thread) pushes it around each call.
- Optimisation profiles: a profile serves one execution context at a time (TensorRT refuses two
  contexts on one profile of a dynamic-shape engine before 10, and a shared profile would have
  its shapes reset under a running context), so an engine keeps one context per profile, set
  with ``set_optimization_profile_async``. Plans carry one fixed-shape profile per batch bucket
  (export/tensorrt_build.py: the denoiser at batch 1..k, the style encoder at 1..4); a batch
  between buckets is padded to the next bucket by repeating its last row and the output cut.
- Per run shape (one per fixed profile): preallocated device buffers and pinned host buffers;
  a call is copy in -> enqueue -> copy out -> synchronise on the engine's stream, no allocation.
- The first enqueue of a shape runs on initialised inputs (:func:`warmup_inputs`: zeros, valid
  diffusion steps), never on uninitialised device memory, and finishes TensorRT's lazy set-up.
- The denoiser's enqueue is then captured into a CUDA graph through cuda-python
  (engines/cuda_graph.py) on pycuda's stream and replayed; without cuda-python, on a capture
  failure, or on a profile with a shape range, it runs plain ``execute_async_v3`` and says why
  in a warning.
- TensorRT 10 and 11 share this API (set_input_shape, set_tensor_address, execute_async_v3,
  set_optimization_profile_async, get_tensor_profile_shape)."""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from engines.artefacts import ArtefactLookup
from engines.cuda_graph import CudaGraph
from engines.networks import Networks, check_stream_rows, check_window, denoiser_input_names

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


# --- what runs before any real input: pure functions, tested without a GPU ----------------------------

# inputs whose zero is not a meaningful value: the denoiser's step indexes its sinusoid table
# (0..n_diff_steps; 1 is a sampling step of every schedule), the indicator marks real frames
WARMUP_VALUES = {"step": 1, "indicator": 1}


def warmup_inputs(specs: dict[str, tuple[tuple, np.dtype]]) -> dict[str, np.ndarray]:
    """Inputs for the first (warm-up and capture) enqueue of a shape: name -> (shape, dtype) to
    arrays of zeros, except the values of :data:`WARMUP_VALUES`, so no index is out of range."""
    return {name: np.full(shape, WARMUP_VALUES.get(name, 0), dtype=dtype) for name, (shape, dtype) in specs.items()}


ProfileRanges = dict[str, tuple[tuple, tuple]]  # dynamic input name -> (min shape, max shape)


def _fits(ranges: ProfileRanges, shapes: dict[str, tuple]) -> bool:
    def within(lo, shape, hi):
        return shape is not None and len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))

    return all(within(lo, shapes.get(name), hi) for name, (lo, hi) in ranges.items())


def profile_is_fixed(ranges: ProfileRanges) -> bool:
    """One shape only: its context never changes shape, so its enqueue can be a CUDA graph."""
    return all(lo == hi for lo, hi in ranges.values())


def select_profile(profiles: list[ProfileRanges], shapes: dict[str, tuple]) -> tuple[int, dict[str, tuple]]:
    """(profile index, shapes to run) for inputs of ``shapes``: a profile that takes them as
    they are (a fixed-shape one first, then the narrowest), else the smallest batch bucket above
    their batch (dimension 0), to which the caller pads them."""
    def width(ranges):
        return sum(b - a for lo, hi in ranges.values() for a, b in zip(lo, hi, strict=True))

    fitting = [p for p, ranges in enumerate(profiles) if _fits(ranges, shapes)]
    if fitting:
        return min(fitting, key=lambda p: (not profile_is_fixed(profiles[p]), width(profiles[p]), p)), dict(shapes)
    batches = {shapes[name][0] for ranges in profiles for name in ranges}
    if len(batches) == 1:
        (n,) = batches
        padded = []
        for p, ranges in enumerate(profiles):
            b = max([n] + [lo[0] for lo, _ in ranges.values()])
            run = {name: ((b, *s[1:]) if name in ranges else s) for name, s in shapes.items()}
            if _fits(ranges, run):
                padded.append((b, not profile_is_fixed(ranges), p, run))
        if padded:
            _, _, p, run = min(padded, key=lambda c: c[:3])
            return p, run
    have = "; ".join(", ".join(f"{name} {lo}..{hi}" for name, (lo, hi) in ranges.items()) or "static"
                     for ranges in profiles)
    raise ValueError(f"no optimisation profile of this plan takes input shapes {shapes} (profiles: {have})")


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """``x`` with its last row repeated up to ``rows`` rows (padding rows are valid inputs, and
    rows are independent in these networks, so the real rows' outputs do not change)."""
    if len(x) == rows:
        return x
    return np.concatenate([x, np.repeat(x[-1:], rows - len(x), axis=0)])


# --- the engine -------------------------------------------------------------------------------------------

class _Binding:
    """Buffers and (optionally) CUDA graph for one run shape on one profile's context."""

    def __init__(self, eng: TrtEngine, profile: int, shapes: dict[str, tuple]):
        cuda = eng.cuda
        self.eng, self.profile, self.shapes = eng, profile, shapes
        self.context = eng.profile_context(profile)
        self.host, self.device = {}, {}
        self._set_shapes()
        for name in eng.input_names + eng.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            self.host[name] = cuda.pagelocked_empty(shape, numpy_dtype(eng.engine.get_tensor_dtype(name)))
            self.device[name] = cuda.mem_alloc(max(self.host[name].nbytes, 1))
        self._set_addresses()
        self.graph: CudaGraph | None = None

    def _set_shapes(self) -> None:
        for name in self.eng.input_names:
            if not self.context.set_input_shape(name, self.shapes[name]):
                raise ValueError(f"TensorRT engine refuses shape {self.shapes[name]} for input {name!r}")

    def _set_addresses(self) -> None:
        for name, buf in self.device.items():
            self.context.set_tensor_address(name, int(buf))

    def bind(self) -> None:
        """Make the profile's context run this binding's shapes and buffers (when it last ran
        another shape of a shape-range profile)."""
        self._set_shapes()
        self._set_addresses()

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(self.eng.stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def warm_up(self) -> None:
        """First enqueue, outside any capture (TensorRT finishes its lazy set-up here), on
        initialised inputs."""
        warm = warmup_inputs({n: (self.host[n].shape, self.host[n].dtype) for n in self.eng.input_names})
        for name, value in warm.items():
            self.host[name][...] = value
            self.eng.cuda.memcpy_htod_async(self.device[name], self.host[name], self.eng.stream)
        self.enqueue()
        self.eng.stream.synchronize()

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """The ``outputs`` (default: the first) for ``feeds``, by name."""
        cuda, stream = self.eng.cuda, self.eng.stream
        for name in self.eng.input_names:
            np.copyto(self.host[name], feeds[name], casting="same_kind")
            cuda.memcpy_htod_async(self.device[name], self.host[name], stream)
        if self.graph is not None:
            self.graph.launch(stream.handle)
        else:
            self.enqueue()
        names = outputs or self.eng.output_names[:1]
        for out in names:
            cuda.memcpy_dtoh_async(self.host[out], self.device[out], stream)
        stream.synchronize()
        return {out: np.array(self.host[out], dtype=np.float32) for out in names}


class TrtEngine:
    """One deserialized plan: an execution context per optimisation profile, a binding (buffers
    + CUDA graph) per run shape, one stream; calls are serialised by a lock."""

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
            self.stream = self.cuda.Stream()
        self.runtime = runtime  # keep alive as long as the engine
        self.use_graph = use_graph
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.profiles = self._profile_ranges()
        self._contexts: dict[int, object] = {}
        self._bound: dict[int, _Binding] = {}  # whose shapes and buffers each profile's context holds
        self._bindings: dict[tuple, _Binding] = {}
        self._graph_warnings: set[str] = set()
        self._lock = threading.Lock()

    def _profile_ranges(self) -> list[ProfileRanges]:
        dynamic = [n for n in self.input_names if -1 in tuple(self.engine.get_tensor_shape(n))]
        out = []
        for p in range(max(1, self.engine.num_optimization_profiles)):
            ranges = {}
            for name in dynamic:
                lo, _opt, hi = self.engine.get_tensor_profile_shape(name, p)
                ranges[name] = (tuple(lo), tuple(hi))
            out.append(ranges)
        return out

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

    def profile_context(self, profile: int):
        """The execution context that owns optimisation profile ``profile`` (made on first use)."""
        context = self._contexts.get(profile)
        if context is None:
            context = self.engine.create_execution_context()
            if context is None:
                raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
            if not context.set_optimization_profile_async(profile, self.stream.handle):
                raise RuntimeError(f"TensorRT refused optimisation profile {profile} of {self.path.name}")
            self.stream.synchronize()
            self._contexts[profile] = context
        return context

    def _new_binding(self, profile: int, shapes: dict[str, tuple]) -> _Binding:
        binding = _Binding(self, profile, shapes)
        self._bound[profile] = binding
        binding.warm_up()
        if self.use_graph:
            binding.graph = self._capture(binding)
        return binding

    def _capture(self, binding: _Binding) -> CudaGraph | None:
        """The binding's enqueue as a CUDA graph, or None (and a warning saying why: once per
        engine and reason, later shapes at debug level)."""
        where = f"{self.path.name} at {binding.shapes}"
        if not profile_is_fixed(self.profiles[binding.profile]):
            self._no_graph("range", f"TensorRT: no CUDA graph for {where}: its optimisation profile spans a shape "
                           "range (a plan from before per-batch profiles: delete it to rebuild); plain enqueue")
            return None
        try:
            graph = CudaGraph.capture(self.stream.handle, binding.enqueue)
        except ImportError:
            self._no_graph("cuda-python", f"TensorRT: no CUDA graph for {where}: CUDA graphs need cuda-python (pip "
                           "install cuda-python; pycuda has no graph API); plain enqueue")
        except Exception as exc:  # a graph is an optimisation: a failure costs only launch overhead
            self._no_graph(f"capture {exc}", f"TensorRT: CUDA graph capture of {where} failed ({exc}); plain enqueue")
        else:
            log.debug("TensorRT: CUDA graph captured for %s", where)
            return graph
        self.stream.synchronize()  # surfaces an error the failed capture left on the stream
        return None

    def _no_graph(self, reason: str, message: str) -> None:
        log.log(logging.DEBUG if reason in self._graph_warnings else logging.WARNING, message)
        self._graph_warnings.add(reason)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The plan's first output for ``feeds``."""
        return self.run_outputs(feeds, self.output_names[:1])[self.output_names[0]]

    def run_outputs(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Every output (or those named) for ``feeds``, by name: a graph with state outputs (the
        streaming audio encoder) needs them all."""
        outputs = outputs or list(self.output_names)
        shapes = {n: tuple(v.shape) for n, v in feeds.items()}
        profile, run_shapes = select_profile(self.profiles, shapes)
        if run_shapes != shapes:  # between batch buckets: pad to the bucket, cut the output
            rows = {shapes[n][0] for n in self.profiles[profile]}.pop()
            feeds = {n: (pad_rows(v, run_shapes[n][0]) if n in self.profiles[profile] else v) for n, v in feeds.items()}
        else:
            rows = None
        key = tuple(sorted(run_shapes.items()))
        with self._lock, self._context():
            binding = self._bindings.get(key)
            if binding is None:
                binding = self._bindings[key] = self._new_binding(profile, run_shapes)
            elif self._bound.get(profile) is not binding:
                binding.bind()
                self._bound[profile] = binding
            out = binding.run(feeds, outputs)
        return out if rows is None else {n: v[:rows] for n, v in out.items()}


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
        self._stream: dict[int, TrtEngine] = {}  # streaming encoder plans by chunk length
        self._style: TrtEngine | None = None
        # engines made on first use: two sessions' threads asking at once must not both load one
        self._engines_lock = threading.Lock()
        self._denoiser = self._engine("denoiser")
        log.info("tensorrt %s: plans for model %s", precision, artefacts.key)

    def _engine(self, graph: str, window_samples: int | None = None, precision: str | None = None) -> TrtEngine:
        plan = self.artefacts.plan(graph, precision or self.precision, window_samples, self.gpu)
        return TrtEngine(plan, use_graph=graph == "denoiser")

    def _cached_engine(self, cache: dict[int, TrtEngine], graph: str, samples: int) -> TrtEngine:
        """The plan of ``graph`` at ``samples``, loaded once: sessions' threads ask concurrently."""
        eng = cache.get(samples)
        if eng is None:
            with self._engines_lock:
                eng = cache.get(samples)
                if eng is None:
                    eng = cache[samples] = self._engine(graph, samples)
        return eng

    def _audio_engine(self, window_samples: int) -> TrtEngine:
        return self._cached_engine(self._audio, "audio", window_samples)

    def _style_engine(self) -> TrtEngine:
        if self._style is None:
            with self._engines_lock:
                if self._style is None:
                    self._style = self._engine("style", precision="fp32")  # once per style: fp32 always
        return self._style

    def audio_features(self, audio):
        check_window(audio)
        return self._audio_engine(len(audio)).run({"audio": np.ascontiguousarray(audio, dtype=np.float32)[None]})[0]

    def stream_audio_batch(self, audio, state):
        """The streaming encoder's plan at this chunk length over B sessions' rows (state in and
        out: the plan's three outputs are copied back)."""
        check_stream_rows(audio, state, self.stream_state_size())
        eng = self._cached_engine(self._stream, "stream", audio.shape[1])
        out = eng.run_outputs({"audio": np.ascontiguousarray(audio, dtype=np.float32),
                               "state": np.ascontiguousarray(state, dtype=np.float32)},
                              ["final", "provisional", "state_out"])
        return out["final"], out["provisional"], out["state_out"]

    def denoise(self, inputs):
        return self._denoiser.run({n: inputs[n] for n in self.input_names})

    def style(self, motion):
        if self.cfg.style_encoder is None or not self.cfg.use_style:
            raise ValueError("this model has no style encoder")
        return self._style_engine().run({"motion": np.ascontiguousarray(motion, dtype=np.float32)})
