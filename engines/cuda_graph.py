"""CUDA graphs by stream capture through cuda-python, on any stream given by its raw handle.

pycuda has no CUDA-graph API, so the TensorRT runtime (engines/tensorrt_runtime.py) captures its
enqueue with cuda-python's runtime bindings on pycuda's stream handle: begin capture, enqueue,
end capture, instantiate once; launch the instantiated graph on every later call. The work is
enqueued on the current (primary) context, which pycuda, TensorRT and the CUDA runtime share.

- ``cuda.bindings.runtime`` (cuda-python 12.6 on), else ``cuda.cudart`` (older cuda-python).
- Capture mode thread-local: another thread's CUDA calls (a server's other sessions) neither
  break this capture nor are broken by it.
- Every cuda-python call returns ``(error, *values)``; a non-success error raises
  :class:`CudaGraphError` with the error's name, so a caller can log why it fell back."""

from __future__ import annotations

from collections.abc import Callable


class CudaGraphError(RuntimeError):
    """A CUDA call of the capture, instantiation or launch failed (the message names it)."""


def cuda_runtime():
    """cuda-python's runtime bindings; ImportError when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # cuda-python before 12.6
    return runtime


def _checked(rt, result, what: str):
    """The values of a cuda-python call's ``(error, *values)`` result; raises on an error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        name = rt.cudaGetErrorName(err)
        name = name[1].decode() if isinstance(name, tuple) and isinstance(name[1], bytes) else str(err)
        raise CudaGraphError(f"{what} failed: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _instantiate(rt, graph):
    # cudaGraphInstantiateWithFlags(graph, flags) has one signature in CUDA 11.4 to 13;
    # cudaGraphInstantiate's changed between CUDA 11 and 12
    if hasattr(rt, "cudaGraphInstantiateWithFlags"):
        return _checked(rt, rt.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiateWithFlags")
    exec_ = _checked(rt, rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
    return exec_[0] if isinstance(exec_, tuple) else exec_


class CudaGraph:
    """An executable CUDA graph captured from the work ``enqueue`` puts on one stream."""

    def __init__(self, rt, graph, graph_exec):
        self._rt, self._graph, self._exec = rt, graph, graph_exec

    @classmethod
    def capture(cls, stream_handle: int, enqueue: Callable[[], None]) -> CudaGraph:
        """Capture what ``enqueue()`` enqueues on the stream ``stream_handle`` (an int, e.g.
        pycuda's ``Stream.handle`` or torch's ``Stream.cuda_stream``) and instantiate it. The
        stream must be idle and ``enqueue`` must already have run once outside capture (lazy
        set-up such as allocations is not capturable). ImportError without cuda-python,
        CudaGraphError when CUDA refuses; the stream is out of capture mode either way."""
        rt = cuda_runtime()
        stream = int(stream_handle)
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _checked(rt, rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        except BaseException:
            graph = rt.cudaStreamEndCapture(stream)  # leave capture mode; the partial graph is dropped
            if isinstance(graph, tuple) and len(graph) > 1 and graph[0] == rt.cudaError_t.cudaSuccess and graph[1]:
                rt.cudaGraphDestroy(graph[1])
            raise
        graph = _checked(rt, rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            graph_exec = _instantiate(rt, graph)
        except BaseException:
            rt.cudaGraphDestroy(graph)
            raise
        return cls(rt, graph, graph_exec)

    def launch(self, stream_handle: int) -> None:
        if self._exec is None:
            raise CudaGraphError("launch of a closed CUDA graph")
        _checked(self._rt, self._rt.cudaGraphLaunch(self._exec, int(stream_handle)), "cudaGraphLaunch")

    def close(self) -> None:
        """Free the graph (its buffers stay the caller's); idempotent."""
        graph_exec, graph, self._exec, self._graph = self._exec, self._graph, None, None
        if graph_exec is not None:
            self._rt.cudaGraphExecDestroy(graph_exec)
        if graph is not None:
            self._rt.cudaGraphDestroy(graph)
