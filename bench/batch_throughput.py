"""How the networks scale with batch size on one device: the figure a batched multi-stream server
is sized by. Each row times one audio-encoder call over B windows and one denoiser pass over B
rows (a teacher needs 1 + guiding-condition rows per stream and step; a student one), with inputs
already on the device, after warm-up, synchronised, median of repeats.

From the rows it estimates how many live streams one device serves: a stream needs, per hop, one
audio window and ``steps`` denoiser passes; with B streams batched, a hop costs
audio(B) + steps * denoise(B * rows), which must stay under the hop (with ``headroom``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from diffposetalk.units import FRAME_SAMPLES, SAMPLE_RATE


@dataclass
class BatchRow:
    batch: int  # streams served by one batched call
    audio_ms: float  # one audio-encoder call over `batch` windows
    denoise_ms: float  # one denoiser pass over batch * rows_per_stream rows
    rows_per_stream: int

    def hop_ms(self, steps: int) -> float:
        return self.audio_ms + steps * self.denoise_ms


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device: torch.device, repeats: int) -> float:
    for _ in range(2):  # warm-up: kernel selection, allocator, lazy init
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def denoiser_rows(cfg) -> int:
    """Denoiser rows one stream needs per step: all CFG passes of a teacher, one for a student."""
    return 1 if cfg.kind == "student" else 1 + len(cfg.guiding_conditions)


def _denoiser_inputs(cfg, rows: int, device: torch.device, gen: torch.Generator) -> list:
    L, P, D, F = cfg.n_motions, cfg.n_prev_motions, cfg.motion_dim, cfg.feature_dim
    person = cfg.shape_dim + (cfg.d_style if cfg.use_style else 0)
    r = lambda *s: torch.randn(*s, generator=gen).to(device)  # noqa: E731
    step = torch.randint(1, cfg.n_diff_steps + 1, (rows,), generator=gen).to(device)
    indicator = torch.ones(rows, L, device=device) if cfg.use_indicator else None
    guidance = torch.tensor([[1.15, 3.0]], device=device).expand(rows, -1) if cfg.kind == "student" else None
    return [r(rows, L, D), r(rows, L, F), r(rows, 1, person), r(rows, P, D), r(rows, P, F), step, indicator, guidance]


@torch.inference_mode()
def measure(model, batches: list[int], window_ms: int, repeats: int = 10, seed: int = 0) -> list[BatchRow]:
    """Rows for each batch size (model already on its device, in eval mode)."""
    cfg, device = model.cfg, model.device
    gen = torch.Generator().manual_seed(seed)
    samples = window_ms * SAMPLE_RATE // 1000 // FRAME_SAMPLES * FRAME_SAMPLES
    rows = []
    for b in batches:
        audio = torch.randn(b, samples, generator=gen).to(device)
        args = _denoiser_inputs(cfg, b * denoiser_rows(cfg), device, gen)
        audio_ms = _median_ms(lambda a=audio: model.audio_features(a, samples // FRAME_SAMPLES), device, repeats)
        denoise_ms = _median_ms(lambda a=args: model.denoising_net(*a), device, repeats)
        rows.append(BatchRow(b, audio_ms, denoise_ms, denoiser_rows(cfg)))
        del audio, args  # free before the next, larger batch
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def streams_per_device(rows: list[BatchRow], steps: int, hop_ms: float, headroom: float = 0.8) -> int:
    """The largest measured batch whose hop cost fits in ``headroom`` of the hop (0: none fits)."""
    fitting = [r.batch for r in rows if r.hop_ms(steps) <= headroom * hop_ms]
    return max(fitting, default=0)


def markdown(name: str, rows: list[BatchRow], steps: int, hop_ms: float, device: str, window_ms: int) -> str:
    lines = [f"### {name} on {device}: window {window_ms} ms, {steps} denoiser step(s) per {hop_ms:.0f} ms hop",
             "", "| streams (batch) | audio ms | denoiser rows | denoiser ms | hop ms | µs per stream-hop | fits |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        hop = r.hop_ms(steps)
        lines.append(f"| {r.batch} | {r.audio_ms:.2f} | {r.batch * r.rows_per_stream} | {r.denoise_ms:.2f} | "
                     f"{hop:.2f} | {1000 * hop / r.batch:.0f} | {'yes' if hop <= 0.8 * hop_ms else 'no'} |")
    lines += ["", f"streams one {device} serves at this setting (largest batch within 80 % of the hop): "
                  f"{streams_per_device(rows, steps, hop_ms)}"]
    return "\n".join(lines)


def run_batch_bench(archs: list[str], models: list, batches: list[int], steps: list[int],
                    windows: list[tuple[int, int, int]], device: str, cache_dir, seed: int = 0,
                    repeats: int = 10, markdown_path=None, json_path=None) -> int:
    """`dpt-live bench --batch-sizes`: the batch table of every model at each window and step count."""
    import json
    from pathlib import Path

    from bench.archs import arch_model_dir
    from diffposetalk.errors import UserError
    from diffposetalk.model_dir import load_model_dir

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: PyTorch sees no CUDA device here")
    entries = [(a, arch_model_dir(a, Path(cache_dir), seed)) for a in archs] + [(str(m), Path(m)) for m in models]
    sections, records = [], []
    for name, path in entries:
        loaded = load_model_dir(path, device)
        loaded.model.eval()
        cfg = loaded.config
        for hop, la, ctx in windows:
            window_ms = ctx + hop + la
            rows = measure(loaded.model, batches, window_ms, repeats, seed)
            for s in sorted({cfg.student_steps or 1} if cfg.kind == "student" else set(steps)):
                sections.append(markdown(name, rows, s, hop, device, window_ms))
                print(sections[-1] + "\n", flush=True)
                records.append({"model": name, "kind": cfg.kind, "device": device, "window_ms": window_ms,
                                "hop_ms": hop, "steps": s, "streams": streams_per_device(rows, s, hop),
                                "rows": [dict(vars(r), hop_ms=r.hop_ms(s)) for r in rows]})
        del loaded
    if markdown_path:
        Path(markdown_path).write_text("\n\n".join(sections) + "\n")
    if json_path:
        Path(json_path).write_text(json.dumps({"device_name": torch.cuda.get_device_name(0) if device.startswith("cuda")
                                               else "cpu", "results": records}, indent=2) + "\n")
    return 0
