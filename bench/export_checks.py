"""Checks `dpt-live export onnx` prints after exporting: per-call time of each graph on each
backend (--time) and the int8 graphs' lip fidelity against fp32 (--int8)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from diffposetalk.units import SAMPLE_RATE


def time_graphs(loaded, out: Path, windows: list[int], int8: bool, repeats: int, threads: int) -> list[dict]:
    """Median wall and thread-CPU time per call of each graph on each backend (one process, the
    same inputs). Thread CPU time is what a dedicated core would take: on a shared machine the
    wall time also counts waiting for a core."""
    from engines.artefacts import ArtefactLookup, model_hash
    from engines.networks import TorchNetworks, denoiser_batch
    from engines.onnx_runtime import OrtNetworks
    from export.onnx_export import denoiser_inputs, parity_audio

    graphs = ArtefactLookup(model_hash(loaded.model), out)  # just exported
    nets = {"torch": TorchNetworks(loaded.model),
            "onnxruntime fp32": OrtNetworks(graphs, loaded.config, "fp32", threads)}
    if int8:
        nets["onnxruntime int8"] = OrtNetworks(graphs, loaded.config, "int8", threads)
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


def quantize_and_check_int8(loaded, out: Path, windows: list[int], audio_path: Path | None) -> dict:
    from bench.fidelity import lip_fidelity
    from engines.artefacts import DENOISER_FILE, ArtefactLookup, audio_file, model_hash
    from engines.onnx_runtime import OrtNetworks
    from export.quantize import quantize_graph
    from streaming.session import StreamConfig
    from streaming.style import choose_style

    for f in [audio_file(w) for w in windows] + [DENOISER_FILE]:
        q = quantize_graph(Path(out) / f)
        size = lambda p: p.stat().st_size / 1e6  # noqa: E731
        print(f"  {q.name:<24} int8, {size(q):.1f} MB (fp32 {size(Path(out) / f):.1f} MB)")
    # fidelity on the default stream window when it was exported, else the longest one asked for
    default = StreamConfig()
    config = default if default.spec().window_samples in windows else window_config(max(windows))
    audio = fidelity_audio(audio_path)
    style = choose_style(loaded, None, any_preset=True).vector
    graphs = ArtefactLookup(model_hash(loaded.model), out)  # just exported and quantised
    fp32 = OrtNetworks(graphs, loaded.config, "fp32")
    int8 = OrtNetworks(graphs, loaded.config, "int8")
    fid = lip_fidelity(loaded, fp32, int8, audio, style, config)
    fid["audio_seconds"] = round(len(audio) / SAMPLE_RATE, 2)
    fid["window_ms"] = config.spec().window_samples * 1000 // SAMPLE_RATE
    print(f"  int8 fidelity vs fp32 ({fid['audio_seconds']} s streamed, window {fid['window_ms']} ms): lip error "
          f"{fid['lip_error']:.4f} (normalised units), jaw-opening r {fid['jaw_corr']:.4f}, "
          f"max motion diff {fid['max_abs_motion_diff']:.3f}")
    return fid


def window_config(window_samples: int):
    """A stream config whose window has this length: hop 80 / lookahead 80 ms, the rest context."""
    from streaming.session import StreamConfig

    ms = window_samples * 1000 // SAMPLE_RATE
    if ms < 160:
        raise UserError(f"a {ms} ms window is shorter than hop + lookahead (160 ms): no fidelity stream possible")
    return StreamConfig(80, 80, ms - 160)


def fidelity_audio(path: Path | None):
    """The audio the int8 check streams: a file, or 8 s of speech-like test audio."""
    if path is None:
        from diffposetalk.synth_audio import speechlike

        return speechlike(8.0, seed=5)
    from diffposetalk.audio_io import load_audio as read

    return np.asarray(read(path), dtype=np.float32)
