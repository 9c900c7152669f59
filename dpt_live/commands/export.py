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
# a streaming encoder's chunks at the defaults: the first step's hop + lookahead, then a hop
DEFAULT_CHUNKS_MS = "160,80"


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
    o.add_argument("--stream-chunk-ms", default=DEFAULT_CHUNKS_MS,
                   help="streaming audio encoder chunk(s) in ms, when the model has one: a stream's first chunk "
                        "(hop + lookahead) and later ones (hop) (default 160,80)")
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
    t.add_argument("--stream-chunk-ms", default=DEFAULT_CHUNKS_MS,
                   help="streaming audio encoder chunk(s) in ms, when the model has one (default 160,80)")
    t.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="fp16: the graph is cast to fp16 with normalisation kept in fp32")
    t.add_argument("--tolerance", type=float, default=None,
                   help="largest max-abs difference to PyTorch accepted (default 1e-3 fp32, 5e-2 fp16)")
    t.set_defaults(func=cmd_tensorrt)


def parse_windows(text: str, option: str = "--window-ms") -> list[int]:
    from export.onnx_export import window_samples_from_ms

    out = []
    for item in str(text).split(","):
        item = item.strip()
        if not item.isdigit():
            raise UserError(f"{option} takes comma-separated whole milliseconds, got {item!r}")
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

    from bench.export_checks import quantize_and_check_int8, time_graphs
    from diffposetalk.model_dir import load_model_dir
    from engines.artefacts import model_hash, onnx_cache_dir
    from export.onnx_export import DEFAULT_TOLERANCE, export_model

    windows = parse_windows(args.window_ms)
    tol = check_tolerance(args.tolerance, DEFAULT_TOLERANCE)
    if args.time < 0 or args.threads < 1:
        raise UserError("--time and --threads must be positive")
    torch.set_num_threads(args.threads)
    loaded = load_model_dir(args.model)
    out = args.out or onnx_cache_dir(loaded.model)
    print(f"exporting {args.model} (model hash {model_hash(loaded.model)}) to {out}")
    chunks = parse_windows(args.stream_chunk_ms, "--stream-chunk-ms")
    records = export_model(loaded.model, out, windows, tol, stream_chunks=chunks)
    for r in records:
        print("  " + r.summary())
    summary = {"model": str(args.model), "model_hash": records[0].model_hash,
               "graphs": [r.__dict__ for r in records]}
    if args.int8:
        summary["int8"] = quantize_and_check_int8(loaded, out, windows, args.audio)
    if args.time:
        summary["timing"] = time_graphs(loaded, out, windows, args.int8, args.time, args.threads)
    (Path(out) / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def cmd_tensorrt(args) -> int:
    from diffposetalk.model_dir import load_model_dir
    from engines.artefacts import model_hash
    from export.onnx_export import default_tolerance
    from export.prepare import build_plans
    from export.tensorrt_build import require_tensorrt

    windows = parse_windows(args.window_ms)
    require_tensorrt()  # a clear error before loading anything when there is no GPU/TensorRT
    tol = check_tolerance(args.tolerance, default_tolerance(args.precision))
    loaded = load_model_dir(args.model)
    key = model_hash(loaded.model)
    print(f"building TensorRT {args.precision} plans for {args.model} (model hash {key})")
    chunks = parse_windows(args.stream_chunk_ms, "--stream-chunk-ms")
    for rec in build_plans(loaded, windows, args.precision, tol, stream_chunks=chunks):
        print("  " + rec)
    return 0
