"""ONNX export of a model's three networks at fixed shapes, each checked against PyTorch.

Graphs (file names are the cache's keys within a model's directory, see engines/artefacts.py):

- ``audio_<S>.onnx``: normalised audio (N, S) -> features (N, S/640, feature_dim), batch dynamic
  (one window per session a batching scheduler serves); one file per streaming window length S
  (context + hop + lookahead), since the encoder is not causal;
- ``stream_audio_<S>.onnx``: the streaming audio encoder's step (diffposetalk/stream_encoder.py):
  (audio (N, S) new samples, state (N, Z)) -> (final, provisional (N, S/640 + delay,
  feature_dim), state_out (N, Z)), batch dynamic (one state row per session); one file per chunk length (a
  session's first chunk is hop + lookahead, later ones a hop);
- ``denoiser.onnx``: DenoisingNetwork.forward at the model's (n_prev, L), batch dynamic (k CFG
  passes of a teacher per window, a student's one pass plus the (w_audio, w_style) guidance input,
  times the windows batched together);
- ``style.onnx``: (N, 100, D) motion -> (N, d_style).

Each file has a ``.json`` sidecar (model hash, shapes, parity). The TorchScript exporter
(dynamo=False) is used: it handles transformers' HubertModel and nn.Transformer at fixed shapes
in about a second, where the dynamo exporter needs much longer for the same graph."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffposetalk.errors import UserError
from diffposetalk.model import DiffPoseTalk
from diffposetalk.units import FRAME_SAMPLES
from engines.artefacts import DENOISER_FILE, OPSET, STYLE_FILE, ExportRecord, audio_file, graph_file, model_hash, stream_file
from engines.networks import TorchNetworks, call_denoiser, denoiser_batch, denoiser_input_names

log = logging.getLogger("dpt_live.export")

DEFAULT_TOLERANCE = 1e-3  # max abs difference to PyTorch (fp32) accepted for an fp32 graph
FP16_TOLERANCE = 5e-2  # ... for an fp16 graph (measured ~1e-3 on the demo model, docs/EXPORT.md)


class ParityError(UserError):
    """An exported graph disagrees with PyTorch beyond the tolerance (the file is not kept)."""


def default_tolerance(precision: str) -> float:
    return FP16_TOLERANCE if precision == "fp16" else DEFAULT_TOLERANCE


def window_samples_from_ms(window_ms: int) -> int:
    if window_ms <= 0 or window_ms % 40:
        raise UserError(f"audio window must be a positive multiple of 40 ms (one motion frame), got {window_ms}")
    return window_ms // 40 * FRAME_SAMPLES


def export_copy(model: DiffPoseTalk, precision: str = "fp32") -> DiffPoseTalk:
    """A CPU copy for export, with HuBERT's positional-conv weight norm folded into a plain weight
    (a fresh instance: parametrisation classes are per module, so removing it from a copy made by
    deepcopy would also strip the original's). fp16: every weight in half precision except the
    normalisation layers, which run in fp32 (their statistics overflow or lose precision in fp16)."""
    twin = DiffPoseTalk(model.cfg)
    twin.load_state_dict({k: v.detach().cpu().float() for k, v in model.state_dict().items()})
    conv = twin.audio_encoder.hubert.encoder.pos_conv_embed.conv
    if hasattr(conv, "parametrizations"):
        torch.nn.utils.parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
    if precision == "fp16":
        twin.half()
        _norms_in_fp32(twin)
    elif precision != "fp32":
        raise ValueError(f"export precision {precision!r} (fp32 or fp16)")
    return twin.eval()


def _norms_in_fp32(model: nn.Module) -> None:
    """Normalisation layers keep fp32 weights and compute in fp32 inside a half model: hooks cast
    around them, so the modules stay what nn.Transformer* expect (eps, weight, ...)."""
    for mod in model.modules():
        if isinstance(mod, (nn.LayerNorm, nn.GroupNorm)):
            mod.float()
            mod.register_forward_pre_hook(lambda m, args: tuple(a.float() for a in args))
            mod.register_forward_hook(lambda m, args, out: out.half())


class CastIO(nn.Module):
    """fp32 graph inputs/outputs around a half-precision body, so callers feed the same arrays at
    every precision."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, *args):
        args = [a.half() if a.dtype == torch.float32 else a for a in args]
        return self.body(*args).float()


class AudioGraph(nn.Module):
    def __init__(self, model: DiffPoseTalk, n_frames: int):
        super().__init__()
        self.model, self.n_frames = model, n_frames

    def forward(self, audio):
        return self.model.audio_features(audio, self.n_frames)


class StreamAudioGraph(nn.Module):
    """The streaming encoder's step: (audio (N, S), state (N, Z)) -> (final, provisional, state)."""

    def __init__(self, model: DiffPoseTalk):
        super().__init__()
        self.enc = model.stream_encoder

    def forward(self, audio, state):
        return self.enc.step(audio, state, peek=self.enc.cfg.delay)


STREAM_OUTPUTS = ["final", "provisional", "state_out"]


class DenoiserGraph(nn.Module):
    def __init__(self, model: DiffPoseTalk):
        super().__init__()
        self.net = model.denoising_net
        self.names = denoiser_input_names(model.cfg)

    def forward(self, *args):
        return call_denoiser(self.net, dict(zip(self.names, args)))


class StyleGraph(nn.Module):
    def __init__(self, model: DiffPoseTalk):
        super().__init__()
        self.enc = model.style_encoder

    def forward(self, motion):
        return self.enc(motion)


# --- parity inputs (realistic ranges, reproducible) ---------------------------------------------------

def parity_audio(window_samples: int) -> np.ndarray:
    from diffposetalk.synth_audio import speechlike

    a = speechlike(window_samples / 16000, seed=7)
    return ((a - a.mean()) / (a.std() + 1e-5)).astype(np.float32)


def denoiser_inputs(cfg, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    L, Lp, D, F = cfg.n_motions, cfg.n_prev_motions, cfg.motion_dim, cfg.feature_dim
    P = cfg.shape_dim + (cfg.d_style if cfg.use_style else 0)
    f32 = np.float32
    out = {"motion": rng.normal(size=(batch, L, D)).astype(f32),
           "audio_feat": rng.normal(size=(batch, L, F)).astype(f32),
           "person": rng.normal(size=(batch, 1, P)).astype(f32),
           "prev_motion": rng.normal(size=(batch, Lp, D)).astype(f32),
           "prev_audio": rng.normal(size=(batch, Lp, F)).astype(f32),
           "step": rng.integers(1, cfg.n_diff_steps + 1, size=batch).astype(np.int64)}
    if cfg.use_indicator:
        ind = np.ones((batch, L), f32)
        ind[:, L // 3:] = 0  # a streaming window: real frames then padding
        out["indicator"] = ind
    if cfg.kind == "student":
        out["guidance"] = np.tile(np.array([[1.15, 3.0]], f32), (batch, 1))
    return out


# --- export ---------------------------------------------------------------------------------------------

def _ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _write_graph(module: nn.Module, args: tuple, names: list[str], out_names: list[str], dynamic: list[str],
                 path: Path, precision: str = "fp32") -> None:
    axes = {n: {0: "N"} for n in dynamic}
    if precision == "fp16":
        module = CastIO(module)
    # traced with autograd on: under no_grad nn.Transformer* take their fused fast path
    # (aten::_native_multi_head_attention), which has no ONNX form
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python values from fixed shapes
        torch.onnx.export(module, args, str(path), input_names=names, output_names=out_names,
                          opset_version=OPSET, dynamo=False, dynamic_axes=axes or None, do_constant_folding=True)


def _check_and_keep(tmp: Path, dst: Path, record: ExportRecord, cases: list[tuple[dict, np.ndarray]]) -> ExportRecord:
    """Run the exported graph on each case, compare with PyTorch's output, keep the file only if
    every difference is within the tolerance (fp16 graphs too: against the fp32 PyTorch model)."""
    sess = _ort_session(tmp)
    diff, scale = 0.0, 0.0
    for feeds, ref in cases:
        refs = ref if isinstance(ref, tuple) else (ref,)  # a graph with several outputs: all checked
        for out, r in zip(sess.run(None, feeds), refs):
            diff = max(diff, float(np.max(np.abs(out - r))))
            scale = max(scale, float(np.max(np.abs(r))))
    record.max_abs_diff, record.ref_max_abs = diff, scale
    if not np.isfinite(diff) or diff > record.tolerance:
        tmp.unlink(missing_ok=True)
        raise ParityError(f"{dst.name}: ONNX Runtime differs from PyTorch by {diff:.3g} (outputs up to "
                          f"{scale:.3g}), over the tolerance {record.tolerance:g}; not written "
                          "(raise --tolerance to accept it)")
    os.replace(tmp, dst)  # atomic: a concurrent reader never sees half a file
    Path(str(dst) + ".json").write_text(json.dumps(asdict(record), indent=2) + "\n")
    return record


def export_audio(model: DiffPoseTalk, out_dir: Path, window_samples: int, tolerance: float | None = None,
                 key: str | None = None, precision: str = "fp32") -> ExportRecord:
    if window_samples <= 0 or window_samples % FRAME_SAMPLES:
        raise UserError(f"audio window of {window_samples} samples is not a whole number of 40 ms frames")
    tolerance = default_tolerance(precision) if tolerance is None else tolerance
    t0 = time.perf_counter()
    ref_model = model
    model = export_copy(model, precision)
    n = window_samples // FRAME_SAMPLES
    dst = Path(out_dir) / audio_file(window_samples, precision)
    tmp = dst.with_suffix(f".tmp{os.getpid()}")
    audio = parity_audio(window_samples)
    # traced at batch 2 so no size-1 axis is mistaken for a broadcast; checked at 1 and 3
    # (distinct windows: a row that leaked into another would show)
    batch = np.stack([audio, audio[::-1], -audio]).astype(np.float32)
    _write_graph(AudioGraph(model, n), (torch.from_numpy(batch[:2].copy()),), ["audio"], ["features"],
                 ["audio", "features"], tmp, precision)
    ref = TorchNetworks(ref_model).audio_features_batch(batch)
    rec = ExportRecord("audio", dst.name, key or model_hash(ref_model), {"audio": ["N", window_samples]}, 0.0, 0.0,
                       tolerance, 0.0, precision,
                       extra={"window_samples": window_samples, "n_frames": n, "batch": "dynamic"})
    rec.seconds = time.perf_counter() - t0
    return _check_and_keep(tmp, dst, rec, [({"audio": batch[:1]}, ref[:1]), ({"audio": batch}, ref)])


def stream_parity_inputs(model: DiffPoseTalk, chunk_samples: int, rows: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Distinct chunks and realistic states (each row's encoder run over its own preceding audio,
    so cached keys/values and filled flags are those of a stream under way; row 0 is fresh)."""
    enc = model.stream_encoder
    audio = parity_audio(chunk_samples * (rows + 1))
    chunks, states = [], []
    with torch.no_grad():
        for r in range(rows):
            lead = audio[:r * chunk_samples][None].copy()
            state = enc.initial_state(1)
            if r:
                state = enc.step(torch.from_numpy(lead), state)[2]
            chunks.append(audio[r * chunk_samples:(r + 1) * chunk_samples])
            states.append(state[0].numpy())
    return np.stack(chunks).astype(np.float32), np.stack(states).astype(np.float32)


def export_stream_audio(model: DiffPoseTalk, out_dir: Path, chunk_samples: int, tolerance: float | None = None,
                        key: str | None = None, precision: str = "fp32") -> ExportRecord:
    """The streaming encoder's step at chunks of ``chunk_samples`` new samples, state in and out,
    batch dynamic (one row per session), checked against PyTorch on every output."""
    if model.stream_encoder is None:
        raise UserError("this model has no streaming audio encoder (add one with `dpt-live distill-encoder`)")
    if chunk_samples <= 0 or chunk_samples % FRAME_SAMPLES:
        raise UserError(f"an audio chunk of {chunk_samples} samples is not a whole number of 40 ms frames")
    tolerance = default_tolerance(precision) if tolerance is None else tolerance
    t0 = time.perf_counter()
    ref_model = model
    model = export_copy(model, precision)
    dst = Path(out_dir) / stream_file(chunk_samples, precision)
    tmp = dst.with_suffix(f".tmp{os.getpid()}")
    audio, state = stream_parity_inputs(model if precision == "fp32" else export_copy(ref_model), chunk_samples)
    # traced at batch 2 so no size-1 axis is mistaken for a broadcast; checked at 1 and 3
    _write_graph(StreamAudioGraph(model), (torch.from_numpy(audio[:2].copy()), torch.from_numpy(state[:2].copy())),
                 ["audio", "state"], STREAM_OUTPUTS, ["audio", "state", *STREAM_OUTPUTS], tmp, precision)
    ref = TorchNetworks(ref_model)
    cases = [({"audio": audio[:b], "state": state[:b]}, ref.stream_audio_batch(audio[:b], state[:b])) for b in (1, 3)]
    cfg = ref_model.stream_encoder.cfg
    rec = ExportRecord("stream", dst.name, key or model_hash(ref_model),
                       {"audio": ["N", chunk_samples], "state": ["N", state.shape[1]]}, 0.0, 0.0, tolerance, 0.0,
                       precision, extra={"chunk_samples": chunk_samples, "n_frames": chunk_samples // FRAME_SAMPLES,
                                         "delay": cfg.delay, "peek": cfg.delay, "batch": "dynamic"})
    rec.seconds = time.perf_counter() - t0
    return _check_and_keep(tmp, dst, rec, [(f, tuple(r)) for f, r in cases])


def export_denoiser(model: DiffPoseTalk, out_dir: Path, tolerance: float | None = None,
                    key: str | None = None, precision: str = "fp32") -> ExportRecord:
    tolerance = default_tolerance(precision) if tolerance is None else tolerance
    t0 = time.perf_counter()
    cfg = model.cfg
    net = export_copy(model, precision)
    names = denoiser_input_names(cfg)
    k = denoiser_batch(cfg)
    dst = Path(out_dir) / graph_file(DENOISER_FILE, precision)
    tmp = dst.with_suffix(f".tmp{os.getpid()}")
    # traced at batch 2 so no size-1 axis is mistaken for a broadcast; checked at 1, k and several
    # windows' rows together (a batching scheduler's call)
    trace = denoiser_inputs(cfg, 2, seed=1)
    _write_graph(DenoiserGraph(net), tuple(torch.from_numpy(trace[n]) for n in names), names, ["out"],
                 names + ["out"], tmp, precision)
    ref = TorchNetworks(model)
    cases = []
    for b in sorted({1, k, 3 * k + 1}):
        feeds = denoiser_inputs(cfg, b, seed=10 + b)
        cases.append((feeds, ref.denoise(feeds)))
    shapes = {n: ["N", *v.shape[1:]] for n, v in trace.items()}
    # max_batch: the CFG rows of one window (a TensorRT profile's optimum); the graph takes any batch
    rec = ExportRecord("denoiser", dst.name, key or model_hash(model), shapes, 0.0, 0.0, tolerance, 0.0,
                       precision, extra={"max_batch": k, "kind": cfg.kind, "batch": "dynamic"})
    rec.seconds = time.perf_counter() - t0
    return _check_and_keep(tmp, dst, rec, cases)


def export_style(model: DiffPoseTalk, out_dir: Path, tolerance: float | None = None,
                 key: str | None = None, precision: str = "fp32") -> ExportRecord | None:
    if model.style_encoder is None:
        return None
    tolerance = default_tolerance(precision) if tolerance is None else tolerance
    t0 = time.perf_counter()
    net = export_copy(model, precision)
    T, D = model.style_encoder.n_motions, model.cfg.motion_dim
    dst = Path(out_dir) / graph_file(STYLE_FILE, precision)
    tmp = dst.with_suffix(f".tmp{os.getpid()}")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, T, D)).astype(np.float32)
    _write_graph(StyleGraph(net), (torch.from_numpy(x),), ["motion"], ["style"], ["motion", "style"], tmp, precision)
    ref = TorchNetworks(model)
    cases = []
    for b in (1, 2):
        m = rng.normal(size=(b, T, D)).astype(np.float32)
        cases.append(({"motion": m}, ref.style(m)))
    rec = ExportRecord("style", dst.name, key or model_hash(model), {"motion": ["N", T, D]}, 0.0, 0.0,
                       tolerance, 0.0, precision)
    rec.seconds = time.perf_counter() - t0
    return _check_and_keep(tmp, dst, rec, cases)


def export_model(model: DiffPoseTalk, out_dir: str | Path, windows: list[int],
                 tolerance: float | None = None, precision: str = "fp32",
                 stream_chunks: list[int] | None = None) -> list[ExportRecord]:
    """All graphs of a model: the audio encoder at each window length (samples), the streaming
    encoder at each chunk length (samples; when the model has one), the denoiser and the style
    encoder (always fp32). Raises ParityError on the first graph over the tolerance."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = model_hash(model)
    records = [export_audio(model, out_dir, w, tolerance, key, precision) for w in windows]
    if model.stream_encoder is not None:
        records += [export_stream_audio(model, out_dir, c, tolerance, key, precision) for c in stream_chunks or []]
    records.append(export_denoiser(model, out_dir, tolerance, key, precision))
    # the style encoder runs once per style, not per step: fp32 at every precision (and ONNX
    # Runtime 1.32's CPU provider crashes loading its fp16 graph)
    style = export_style(model, out_dir, None if precision != "fp32" else tolerance, key)
    if style is not None:
        records.append(style)
    return records
