"""`dpt-live export onnx` and `dpt-live export tensorrt`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from diffposetalk.errors import UserError

log = logging.getLogger("dpt_live.export")

# the stream defaults (streaming/options.py): 1600 ms context + 80 ms hop + 80 ms lookahead
DEFAULT_WINDOW_MS = "1760"


def register(sub: argparse._SubParsersAction) -> None:
    from diffposetalk.paths import DEFAULT_MODEL

    p = sub.add_parser("export", help="ONNX / TensorRT export of a model's networks (docs/EXPORT.md)")
    esub = p.add_subparsers(dest="export_command", required=True, metavar="FORMAT")

    o = esub.add_parser("onnx", help="audio encoder, denoiser and style encoder as ONNX, checked against PyTorch")
    o.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model directory (default: the bundled demo teacher, models/demo)")
    o.add_argument("-o", "--out", type=Path,
                   help="output directory (default: the cache that --backend onnxruntime reads)")
    o.add_argument("--window-ms", default=DEFAULT_WINDOW_MS,
                   help="audio encoder window length(s) in ms, comma-separated: context + hop + lookahead "
                        "of the streams it will serve (default 1760 = 1600 + 80 + 80)")
    o.add_argument("--tolerance", type=float, default=None,
                   help="largest max-abs difference to PyTorch accepted (default 1e-3); over it the graph "
                        "is refused")
    o.add_argument("--int8", action="store_true",
                   help="also write dynamic int8 (CPU) graphs and measure their lip-metric fidelity")
    o.add_argument("--audio", type=Path, help="audio for the int8 fidelity run (default: 8 s of synthetic speech)")
    o.add_argument("--time", type=int, metavar="N", default=0,
                   help="also time N calls of each graph: torch vs onnxruntime fp32 (vs int8)")
    o.add_argument("--threads", type=int, default=1, help="torch threads and ONNX Runtime intra-op threads")
    o.set_defaults(func=cmd_onnx)

    t = esub.add_parser("tensorrt", help="TensorRT plans from the ONNX graphs (needs a CUDA GPU and TensorRT)")
    t.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model directory (default: the bundled demo teacher, models/demo)")
    t.add_argument("--window-ms", default=DEFAULT_WINDOW_MS, help="audio encoder window length(s) in ms")
    t.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="fp16: the graph is cast to fp16 with normalisation kept in fp32")
    t.add_argument("--tolerance", type=float, default=None,
                   help="largest max-abs difference to PyTorch accepted (default 1e-3 fp32, 5e-2 fp16)")
    t.set_defaults(func=cmd_tensorrt)


def parse_windows(text: str) -> list[int]:
    from export.onnx_export import window_samples_from_ms

    out = []
    for item in str(text).split(","):
        item = item.strip()
        if not item.isdigit():
            raise UserError(f"--window-ms takes comma-separated whole milliseconds, got {item!r}")
        out.append(window_samples_from_ms(int(item)))
    return sorted(set(out))


def check_tolerance(tol: float | None, default: float) -> float:
    if tol is None:
        return default
    if not tol > 0:
        raise UserError(f"--tolerance must be positive, got {tol}")
    return tol


def cmd_onnx(args) -> int:
    import torch

    from diffposetalk.model_dir import load_model_dir
    from engines.networks import model_hash, onnx_cache_dir
    from export.onnx_export import DEFAULT_TOLERANCE, export_model

    windows = parse_windows(args.window_ms)
    tol = check_tolerance(args.tolerance, DEFAULT_TOLERANCE)
    if args.time < 0 or args.threads < 1:
        raise UserError("--time and --threads must be positive")
    torch.set_num_threads(args.threads)
    loaded = load_model_dir(args.model)
    out = args.out or onnx_cache_dir(loaded.model)
    print(f"exporting {args.model} (model hash {model_hash(loaded.model)}) to {out}")
    records = export_model(loaded.model, out, windows, tol)
    for r in records:
        print("  " + r.summary())
    summary = {"model": str(args.model), "model_hash": records[0].model_hash,
               "graphs": [r.__dict__ for r in records]}
    if args.int8:
        summary["int8"] = int8_step(loaded, out, windows, args.audio)
    if args.time:
        summary["timing"] = timing_step(loaded, out, windows, args.int8, args.time, args.threads)
    (Path(out) / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def timing_step(loaded, out: Path, windows: list[int], int8: bool, repeats: int, threads: int) -> list[dict]:
    """Median wall and thread-CPU time per call of each graph on each backend (one process, the
    same inputs). Thread CPU time is what a dedicated core would take: on a shared machine the
    wall time also counts waiting for a core."""
    import time

    import numpy as np

    from engines.networks import TorchNetworks, denoiser_batch
    from engines.onnx_runtime import OrtNetworks
    from export.onnx_export import denoiser_inputs, parity_audio

    nets = {"torch": TorchNetworks(loaded.model),
            "onnxruntime fp32": OrtNetworks(out, loaded.config, "fp32", threads, model=loaded.model)}
    if int8:
        nets["onnxruntime int8"] = OrtNetworks(out, loaded.config, "int8", threads, model=loaded.model)
    calls = [(f"audio encoder {w // 16} ms", "audio_features", parity_audio(w)) for w in windows]
    for b in sorted({denoiser_batch(loaded.config), 1}, reverse=True):
        calls.append((f"denoiser pass, batch {b}", "denoise", denoiser_inputs(loaded.config, b)))
    rows = []
    for label, method, x in calls:
        row = {"call": label}
        for name, net in nets.items():
            fn = getattr(net, method)
            fn(x)  # warm-up (first-call allocations, lazy session set-up)
            wall, cpu = [], []
            for _ in range(repeats):
                w0, c0 = time.perf_counter(), time.thread_time()
                fn(x)
                cpu.append(time.thread_time() - c0)
                wall.append(time.perf_counter() - w0)
            row[name] = {"wall_ms": 1000 * float(np.median(wall)), "cpu_ms": 1000 * float(np.median(cpu))}
        rows.append(row)
    names = list(nets)
    print(f"  per-call time, median of {repeats} ({threads} thread{'s' if threads > 1 else ''}), wall / thread CPU ms:")
    print("  | call | " + " | ".join(names) + " |")
    for r in rows:
        cells = [f"{r[n]['wall_ms']:.1f} / {r[n]['cpu_ms']:.1f}" for n in names]
        print(f"  | {r['call']} | " + " | ".join(cells) + " |")
    return rows


def int8_step(loaded, out: Path, windows: list[int], audio_path: Path | None) -> dict:
    from bench.fidelity import lip_fidelity
    from engines.onnx_runtime import OrtNetworks
    from export.onnx_export import DENOISER_FILE, audio_file
    from export.quantize import quantize_graph
    from streaming.session import StreamConfig

    for f in [audio_file(w) for w in windows] + [DENOISER_FILE]:
        q = quantize_graph(Path(out) / f)
        size = lambda p: p.stat().st_size / 1e6  # noqa: E731
        print(f"  {q.name:<24} int8, {size(q):.1f} MB (fp32 {size(Path(out) / f):.1f} MB)")
    # fidelity on the default stream window when it was exported, else the longest one asked for
    default = StreamConfig()
    config = default if default.spec().window_samples in windows else window_config(max(windows))
    audio = load_audio(audio_path)
    style = loaded.styles.get("default", next(iter(loaded.styles.values()), None))
    fp32 = OrtNetworks(out, loaded.config, "fp32", model=loaded.model)
    int8 = OrtNetworks(out, loaded.config, "int8", model=loaded.model)
    fid = lip_fidelity(loaded, fp32, int8, audio, style, config)
    fid["audio_seconds"] = round(len(audio) / 16000, 2)
    fid["window_ms"] = config.spec().window_samples // 16
    print(f"  int8 fidelity vs fp32 ({fid['audio_seconds']} s streamed, window {fid['window_ms']} ms): lip error "
          f"{fid['lip_error']:.4f} (normalised units), jaw-opening r {fid['jaw_corr']:.4f}, "
          f"max motion diff {fid['max_abs_motion_diff']:.3f}")
    return fid


def window_config(window_samples: int):
    """A stream config whose window has this length: hop 80 / lookahead 80 ms, the rest context."""
    from streaming.session import StreamConfig

    ms = window_samples // 16
    if ms < 160:
        raise UserError(f"a {ms} ms window is shorter than hop + lookahead (160 ms): no fidelity stream possible")
    return StreamConfig(80, 80, ms - 160)


def load_audio(path: Path | None):
    import numpy as np

    if path is None:
        from diffposetalk.synth_audio import speechlike

        return speechlike(8.0, seed=5)
    from diffposetalk.audio_io import load_audio as read

    return np.asarray(read(path), dtype=np.float32)


def cmd_tensorrt(args) -> int:
    from diffposetalk.model_dir import load_model_dir
    from engines.networks import model_hash, onnx_cache_dir
    from export.onnx_export import default_tolerance
    from export.tensorrt_build import build_plans, require_tensorrt

    windows = parse_windows(args.window_ms)
    require_tensorrt()  # a clear error before loading anything when there is no GPU/TensorRT
    tol = check_tolerance(args.tolerance, default_tolerance(args.precision))
    loaded = load_model_dir(args.model)
    key = model_hash(loaded.model)
    onnx_dir = onnx_cache_dir(loaded.model)
    print(f"building TensorRT {args.precision} plans for {args.model} (model hash {key})")
    for rec in build_plans(loaded, onnx_dir, windows, args.precision, tol):
        print("  " + rec)
    return 0
