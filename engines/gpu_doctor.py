"""What this machine has for the GPU paths, and what is missing with how to get it
(`dpt-live doctor`; `make gpu-check` prints it first and skips what cannot run).

Each :class:`Check` looks at one piece by itself: the NVIDIA driver (asked through ctypes, so a
missing driver is never mistaken for a missing package), PyTorch's CUDA build, TensorRT, pycuda,
cuda-python (CUDA graphs of the TensorRT backend), ONNX Runtime's GPU build and whether its CUDA
provider really loads, and which engine backends can run here. Nothing is installed or changed."""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import textwrap
from dataclasses import asdict, dataclass

from engines.networks import BACKEND_NAMES, LIBCUDA, backend_unavailable, cuda_driver_problem, load_libcuda

# README "GPU install" holds the full steps; these are the one-line versions the report prints
FIX_TORCH = ('install a CUDA build of the same torch version (the selector on PyTorch\'s site names the wheel '
             'for your CUDA version; README "GPU install")')
FIX_TENSORRT = ("pip install tensorrt (or tensorrt-cu12 / tensorrt-cu13 to match the driver's CUDA major): its "
                "libraries are NVIDIA's packages, fetched from NVIDIA's package index (see TensorRT's install guide); "
                "TensorRT 10 or 11")
FIX_PYCUDA = ("pip install pycuda: there is no wheel, it builds from source and needs the CUDA toolkit (nvcc on PATH "
              "or CUDA_ROOT set, cuda.h), a C++ compiler and the Python headers (python3.11-dev)")
FIX_CUDA_PYTHON = ("pip install cuda-python (wheels; the major version matching the driver's CUDA): without it the "
                   "TensorRT backend runs without CUDA graphs (a warning says so)")
FIX_ORT_GPU = ("pip uninstall onnxruntime && pip install onnxruntime-gpu (one module, two packages: keep only one); "
               "its CUDA provider needs the CUDA and cuDNN libraries of its build, and its TensorRT provider "
               "links TensorRT 10, not 11")


@dataclass
class Check:
    key: str  # what `dpt-live doctor --need KEY` asks for
    title: str
    ok: bool
    detail: str
    fix: str = ""
    optional: bool = False  # missing only costs speed


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def driver_check() -> Check:
    try:
        lib = load_libcuda()
    except OSError as exc:
        return Check("driver", "NVIDIA driver", False, f"{LIBCUDA} cannot be loaded ({exc})",
                     "install the NVIDIA driver (in a container: expose the GPU, e.g. with NVIDIA's container toolkit)")
    version = ctypes.c_int(0)
    lib.cuDriverGetVersion(ctypes.byref(version))
    cuda = f"CUDA {version.value // 1000}.{version.value % 1000 // 10}" if version.value else "CUDA version unknown"
    problem = cuda_driver_problem()
    if problem is not None:
        return Check("driver", "NVIDIA driver", False, f"{LIBCUDA} ({cuda}): {problem}",
                     "check that a GPU is visible (nvidia-smi)")
    count = ctypes.c_int(0)
    lib.cuDeviceGetCount(ctypes.byref(count))
    names = []
    for i in range(count.value):
        dev, buf = ctypes.c_int(0), ctypes.create_string_buffer(256)
        if lib.cuDeviceGet(ctypes.byref(dev), i) == 0 and lib.cuDeviceGetName(buf, 256, dev) == 0:
            names.append(buf.value.decode(errors="replace"))
    return Check("driver", "NVIDIA driver", True, f"{LIBCUDA}, driver supports {cuda}, {count.value} device(s): "
                 f"{', '.join(names) or '?'}")


def torch_check() -> Check:
    import torch

    title = "PyTorch CUDA"
    if torch.version.cuda is None:
        return Check("torch-cuda", title, False, f"torch {torch.__version__} is a CPU-only build", FIX_TORCH)
    if not torch.cuda.is_available():
        return Check("torch-cuda", title, False, f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU",
                     "see the NVIDIA driver line")
    return Check("torch-cuda", title, True, f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
                 f"{torch.cuda.get_device_name(0)}")


def tensorrt_check() -> Check:
    if importlib.util.find_spec("tensorrt") is None:
        return Check("tensorrt", "TensorRT", False, "the tensorrt package is not installed", FIX_TENSORRT)
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        return Check("tensorrt", "TensorRT", False, f"installed ({_version('tensorrt') or '?'}) but does not load: {exc}",
                     FIX_TENSORRT)
    return Check("tensorrt", "TensorRT", True, f"tensorrt {tensorrt.__version__}")


def pycuda_check() -> Check:
    if importlib.util.find_spec("pycuda") is None:
        return Check("pycuda", "pycuda", False, "not installed", FIX_PYCUDA)
    installed = _version("pycuda") or "pycuda"
    try:
        import pycuda.driver  # noqa: F401  (loads libcuda: a missing driver shows here too)
    except ImportError as exc:
        why = "the NVIDIA driver is missing (see its line)" if LIBCUDA in str(exc) else "reinstall it against this CUDA"
        return Check("pycuda", "pycuda", False, f"{installed} installed, but pycuda.driver does not load ({exc})", why)
    return Check("pycuda", "pycuda", True, installed)


def cuda_python_check() -> Check:
    from engines.cuda_graph import cuda_runtime

    try:
        cuda_runtime()
    except ImportError as exc:
        return Check("cuda-python", "cuda-python", False, f"not installed ({exc})", FIX_CUDA_PYTHON, optional=True)
    return Check("cuda-python", "cuda-python", True, f"{_version('cuda-bindings', 'cuda-python') or 'installed'}: "
                 "CUDA graphs for the TensorRT backend", optional=True)


def _provider_loads(ort, provider: str) -> bool:
    """Whether a session asked for ``provider`` really gets it (a one-node graph, in memory)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=[provider, "CPUExecutionProvider"])
    except Exception:
        return False
    return provider in sess.get_providers()


def onnxruntime_check() -> Check:
    title = "ONNX Runtime GPU"
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return Check("onnxruntime-gpu", title, False, f"onnxruntime not installed ({exc})", FIX_ORT_GPU, optional=True)
    gpu, cpu = _version("onnxruntime-gpu"), _version("onnxruntime")
    providers = ort.get_available_providers()
    both = " (both onnxruntime and onnxruntime-gpu are installed: they share one module; keep one)" if gpu and cpu else ""
    found = f"{gpu or cpu or 'onnxruntime ' + ort.__version__}, providers {', '.join(providers)}{both}"
    if "CUDAExecutionProvider" not in providers:
        return Check("onnxruntime-gpu", title, False, f"{found}: a CPU-only build", FIX_ORT_GPU, optional=True)
    if not _provider_loads(ort, "CUDAExecutionProvider"):
        return Check("onnxruntime-gpu", title, False, f"{found}; the CUDA provider does not load (CUDA/cuDNN libraries "
                     "of this build missing, or no GPU): sessions fall back to CPU", FIX_ORT_GPU, optional=True)
    return Check("onnxruntime-gpu", title, True, f"{found}; the CUDA provider loads", optional=True)


def backend_check() -> Check:
    why = backend_unavailable("tensorrt")
    return Check("tensorrt-backend", "TensorRT backend", why is None, why or "tensorrt, pycuda and a CUDA device",
                 "see the lines above" if why else "")


def gpu_report() -> list[Check]:
    """Every check, in the order the report prints them."""
    return [driver_check(), torch_check(), tensorrt_check(), pycuda_check(), cuda_python_check(),
            onnxruntime_check(), backend_check()]


def auto_backend() -> str:
    """What ``--backend auto`` picks here at fp32 (engines.networks.choose_backend's order)."""
    return next((b for b in ("tensorrt", "onnxruntime") if backend_unavailable(b) is None), "torch")


def format_report(checks: list[Check]) -> str:
    width = max(len(c.title) for c in checks)
    indent = " " * (width + 9)
    lines = ["dpt-live doctor: the GPU paths on this machine ([NO] missing, [--] missing but optional)"]
    for c in checks:
        mark = "ok" if c.ok else ("--" if c.optional else "NO")
        lines += textwrap.wrap(c.detail, 116, initial_indent=f"  [{mark}] {c.title:<{width}}  ", subsequent_indent=indent)
        if not c.ok and c.fix:
            lines += textwrap.wrap(c.fix, 116, initial_indent=indent + "-> ", subsequent_indent=indent + "   ")
    runs = [b for b in BACKEND_NAMES if backend_unavailable(b) is None]
    lines.append(f"  backends that run here: {', '.join(runs)}; --backend auto picks {auto_backend()}")
    return "\n".join(lines)


def report_json(checks: list[Check]) -> dict:
    return {"checks": [asdict(c) for c in checks], "auto_backend": auto_backend(),
            "backends": {b: backend_unavailable(b) for b in BACKEND_NAMES}}
