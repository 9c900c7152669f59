"""TensorRT plans from the exported ONNX graphs, for TensorRT 10 and 11.

- Networks are strongly typed: precision comes from the graph's dtypes (TensorRT 11 has no
  precision flags at all; in 10 the strongly-typed flag gives the same behaviour). fp16 plans are
  built from the fp16 ONNX graphs (export/onnx_export.py: half weights, normalisation in fp32).
- fp32 plans clear TF32 where the flag exists, so they match PyTorch fp32 within 1e-3.
- Fixed shapes but the batch: the audio encoder at its window length over batch 1..MAX_WINDOWS,
  the denoiser with one optimisation profile over batch 1..k·MAX_WINDOWS (k = the teacher's CFG
  passes, the optimum; more for a batching scheduler's windows), the style encoder at batch 1..4.
- Plans are cached under <cache>/tensorrt/<key>/ where the key (engines.artefacts.trt_cache_key)
  names the GPU, compute capability, TensorRT version, model hash, graph and precision; a plan is
  checked against PyTorch after it is built and refused over the tolerance. export/prepare.py
  decides when one is built (first use, or `dpt-live export tensorrt`)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from engines.artefacts import ExportRecord
from engines.networks import TorchNetworks, backend_unavailable, denoiser_batch
from engines.tensorrt_runtime import TrtEngine, trt_logger
from export.onnx_export import ParityError, default_tolerance, denoiser_inputs, parity_audio

log = logging.getLogger("dpt_live.export")

WORKSPACE_BYTES = 2 << 30
STYLE_MAX_BATCH = 4
MAX_WINDOWS = 64  # windows (sessions) one batched call carries at most (streaming/scheduler.py)


def require_tensorrt() -> None:
    why = backend_unavailable("tensorrt")
    if why is not None:
        raise UserError(f"TensorRT export needs a CUDA GPU with TensorRT and pycuda: {why}")


def network_flags() -> int:
    """Strongly typed where the flag exists (TensorRT 10); 11 is always strongly typed and has
    dropped the explicit-batch flag."""
    import tensorrt as trt

    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_plan(onnx_path: Path, plan_path: Path, profiles: dict[str, tuple[tuple, tuple, tuple]]) -> Path:
    """Parse ``onnx_path`` and write a serialized engine to ``plan_path`` (atomically).
    profiles: input name -> (min, opt, max) shapes for the inputs with a dynamic batch."""
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
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profiles.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_name(plan_path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(bytes(plan))
    os.replace(tmp, plan_path)
    log.info("built %s in %.0f s", plan_path, time.perf_counter() - t0)
    return plan_path


def plan_profiles(graph: str, cfg, onnx_record: ExportRecord) -> dict:
    if graph == "audio":
        shape = onnx_record.inputs["audio"]
        return {"audio": ((1, *shape[1:]), (1, *shape[1:]), (MAX_WINDOWS, *shape[1:]))}
    if graph == "denoiser":
        k = denoiser_batch(cfg)
        return {name: ((1, *shape[1:]), (k, *shape[1:]), (k * MAX_WINDOWS, *shape[1:]))
                for name, shape in onnx_record.inputs.items()}
    shape = onnx_record.inputs["motion"]
    return {"motion": ((1, *shape[1:]), (1, *shape[1:]), (STYLE_MAX_BATCH, *shape[1:]))}


def build_checked_plan(loaded, onnx: Path, record: ExportRecord, plan: Path, graph: str, precision: str,
                       window_samples: int | None, gpu: tuple[str, tuple, str], tolerance: float | None = None) -> Path:
    """Build the plan of one graph from its ONNX file, check it against PyTorch (removed over the
    tolerance) and write its sidecar, which marks it complete."""
    log.info("building TensorRT %s plan for %s (first use on this GPU/TensorRT)", precision, onnx.name)
    build_plan(onnx, plan, plan_profiles(graph, loaded.config, record))
    tol = default_tolerance(precision) if tolerance is None else tolerance
    diff, scale = plan_parity(loaded, plan, graph, window_samples)
    if not np.isfinite(diff) or diff > tol:
        plan.unlink(missing_ok=True)
        raise ParityError(f"{plan.name}: TensorRT differs from PyTorch by {diff:.3g} (outputs up to {scale:.3g}), "
                          f"over the tolerance {tol:g}; plan removed")
    name, cc, version = gpu
    Path(str(plan) + ".json").write_text(json.dumps(
        {"graph": graph, "onnx": onnx.name, "precision": precision, "gpu": name, "compute_capability": list(cc),
         "tensorrt": version, "model_hash": record.model_hash, "max_abs_diff": diff, "ref_max_abs": scale,
         "tolerance": tol}, indent=2) + "\n")
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
