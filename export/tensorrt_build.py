"""TensorRT plans from the exported ONNX graphs, for TensorRT 10 and 11.

- Networks are strongly typed: precision comes from the graph's dtypes (TensorRT 11 has no
  precision flags at all; in 10 the strongly-typed flag gives the same behaviour). fp16 plans are
  built from the fp16 ONNX graphs (export/onnx_export.py: half weights, normalisation in fp32).
- fp32 plans clear TF32 where the flag exists, so they match PyTorch fp32 within 1e-3.
- Fixed shapes per batch bucket: the audio encoder at its window length, the streaming audio
  encoder at its chunk length (state input and output: one row per session), the denoiser and the
  style encoder each get one fixed-shape optimisation profile per batch bucket (:func:`batch_buckets`:
  1..4, then powers of two, up to MAX_WINDOWS windows for the audio encoder, k·MAX_WINDOWS rows for
  the denoiser — k = the teacher's CFG passes; a batching scheduler's windows — and 4 for the style
  encoder). A profile serves one execution context at a time, and a fixed shape lets the runtime
  capture each context's enqueue as a CUDA graph (engines/tensorrt_runtime.py).
- Plans are cached under <cache>/tensorrt/<key>/ where the key (engines.artefacts.trt_cache_key)
  names the GPU, compute capability, TensorRT version, model hash, graph and precision; a plan is
  checked against PyTorch after it is built and refused over the tolerance. export/prepare.py
  decides when one is built (first use, or `dpt-live export tensorrt`).
- Files are written under a temporary name unique to the process, thread and call, then renamed
  over the target (:func:`write_atomic`): a plan is kept only once checked, and two builders of
  one plan (threads or processes) never write into the same file."""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from engines.artefacts import ExportRecord
from engines.networks import TorchNetworks, backend_unavailable, denoiser_batch
from engines.tensorrt_runtime import TrtEngine, trt_logger
from export.onnx_export import ParityError, default_tolerance, denoiser_inputs, export_copy, parity_audio, stream_parity_inputs

log = logging.getLogger("dpt_live.export")

WORKSPACE_BYTES = 2 << 30
STYLE_MAX_BATCH = 4
MAX_WINDOWS = 64  # windows (sessions) one batched call carries at most (streaming/scheduler.py)


def require_tensorrt() -> None:
    why = backend_unavailable("tensorrt")
    if why is not None:
        raise UserError(f"TensorRT export needs a CUDA GPU with TensorRT and pycuda: {why} "
                        "(`dpt-live doctor` lists what this machine has; README \"GPU install\")")


def temporary_sibling(path: Path) -> Path:
    """A file name beside ``path`` that no other process, thread or call uses."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(4)}.tmp")


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a unique temporary file renamed over it: a reader sees
    the old file or the new one, never a part, and concurrent writers never share a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def batch_buckets(max_batch: int) -> list[int]:
    """Batch sizes that get a fixed-shape profile of their own: 1..4, then powers of two up to
    ``max_batch`` (and ``max_batch`` itself); the runtime pads a batch between two buckets."""
    buckets = [b for b in (1, 2, 3, 4) if b <= max_batch]
    b = 8
    while b < max_batch:
        buckets.append(b)
        b *= 2
    if max_batch > 4:
        buckets.append(max_batch)
    return buckets


def network_flags() -> int:
    """Strongly typed where the flag exists (TensorRT 10); 11 is always strongly typed and has
    dropped the explicit-batch flag."""
    import tensorrt as trt

    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


Profile = dict[str, tuple[tuple, tuple, tuple]]  # input name -> (min, opt, max) shape


def build_plan(onnx_path: Path, plan_path: Path, profiles: list[Profile]) -> Path:
    """Parse ``onnx_path`` and write a serialized engine to ``plan_path`` (atomically)."""
    return write_atomic(plan_path, serialize_plan(onnx_path, profiles))


def serialize_plan(onnx_path: Path, profiles: list[Profile]) -> bytes:
    """The serialized engine of ``onnx_path`` with one optimisation profile per entry of
    ``profiles`` (the inputs with a dynamic batch; none for a fixed-shape graph)."""
    import tensorrt as trt

    logger = trt_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags())
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:
        config.clear_flag(tf32)  # fp32 means fp32 (TF32 matmuls would miss the 1e-3 parity)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above)")
    log.info("built %s (%d profile(s)) in %.0f s", onnx_path.name, len(profiles), time.perf_counter() - t0)
    return bytes(plan)


def plan_profiles(graph: str, cfg, onnx_record: ExportRecord) -> list[Profile]:
    """One fixed-shape profile per batch bucket of the graph's batch-dynamic inputs."""
    if graph == "audio":
        max_batch, names = MAX_WINDOWS, ["audio"]  # a batching scheduler's windows
    elif graph == "stream":
        max_batch, names = MAX_WINDOWS, ["audio", "state"]  # one chunk and state row per session
    elif graph == "denoiser":
        max_batch, names = denoiser_batch(cfg) * MAX_WINDOWS, list(onnx_record.inputs)
    else:
        max_batch, names = STYLE_MAX_BATCH, ["motion"]
    profiles = []
    for b in batch_buckets(max_batch):
        shapes = {name: (b, *onnx_record.inputs[name][1:]) for name in names}
        profiles.append({name: (shape, shape, shape) for name, shape in shapes.items()})
    return profiles


def build_checked_plan(loaded, onnx: Path, record: ExportRecord, plan: Path, graph: str, precision: str,
                       window_samples: int | None, gpu: tuple[str, tuple, str], tolerance: float | None = None) -> Path:
    """Build the plan of one graph from its ONNX file, check it against PyTorch (removed over the
    tolerance) and write its sidecar, which marks it complete."""
    log.info("building TensorRT %s plan for %s (first use on this GPU/TensorRT)", precision, onnx.name)
    profiles = plan_profiles(graph, loaded.config, record)
    data = serialize_plan(onnx, profiles)
    tol = default_tolerance(precision) if tolerance is None else tolerance
    # checked under a name of its own, renamed into place only when it passes
    plan.parent.mkdir(parents=True, exist_ok=True)
    checked = temporary_sibling(plan)
    try:
        with open(checked, "xb") as f:
            f.write(data)
        diff, scale = plan_parity(loaded, checked, graph, window_samples)
        if not np.isfinite(diff) or diff > tol:
            raise ParityError(f"{plan.name}: TensorRT differs from PyTorch by {diff:.3g} (outputs up to {scale:.3g}), "
                              f"over the tolerance {tol:g}; plan removed")
        os.replace(checked, plan)
    finally:
        checked.unlink(missing_ok=True)
    name, cc, version = gpu
    write_atomic(Path(str(plan) + ".json"), (json.dumps(
        {"graph": graph, "onnx": onnx.name, "precision": precision, "gpu": name, "compute_capability": list(cc),
         "tensorrt": version, "model_hash": record.model_hash, "max_abs_diff": diff, "ref_max_abs": scale,
         "tolerance": tol, "batch_profiles": [next(iter(p.values()))[0][0] for p in profiles]}, indent=2) + "\n").encode())
    return plan


def plan_parity(loaded, plan: Path, graph: str, window_samples: int | None) -> tuple[float, float]:
    """Max abs difference of the plan's output to PyTorch fp32 on the export's parity inputs."""
    cfg = loaded.config
    ref = TorchNetworks(loaded.model)
    eng = TrtEngine(plan, use_graph=False)
    cases = []
    if graph == "audio":
        a = parity_audio(window_samples)
        cases.append(({"audio": a[None]}, ref.audio_features(a)[None]))
    elif graph == "stream":  # every output, the state included: the next step starts from it
        audio, state = stream_parity_inputs(export_copy(loaded.model), window_samples)
        want = ref.stream_audio_batch(audio, state)
        got = eng.run_outputs({"audio": audio, "state": state}, ["final", "provisional", "state_out"])
        diff = max(float(np.max(np.abs(g - w))) for g, w in zip(got.values(), want))
        return diff, max(float(np.max(np.abs(w))) for w in want)
    elif graph == "denoiser":
        for b in sorted({1, denoiser_batch(cfg)}):
            feeds = denoiser_inputs(cfg, b, seed=20 + b)
            cases.append((feeds, ref.denoise(feeds)))
    else:
        m = np.random.default_rng(4).normal(size=(1, loaded.model.style_encoder.n_motions, cfg.motion_dim))
        m = m.astype(np.float32)
        cases.append(({"motion": m}, ref.style(m)))
    diff = max(float(np.max(np.abs(eng.run(f) - r))) for f, r in cases)
    return diff, max(float(np.max(np.abs(r))) for _, r in cases)
