"""The CUDA paths of the PyTorch backend (`--device cuda`): the same model on the GPU gives what it
gives on the CPU, offline and streaming. Skipped with the reason where no CUDA device is visible
(CI, the 2-core development box); `make gpu-check` runs them on a GPU machine."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from diffposetalk.model import Guidance, WindowCondition
from diffposetalk.model_dir import load_model_dir
from diffposetalk.sampler import make_sampler
from diffposetalk.synth_audio import speechlike

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device visible to PyTorch (torch.cuda.is_available() is False)")

# GPU kernels (TF32 off below) reorder float sums: agreement within float32 accumulation noise
TOL = 2e-3


@pytest.fixture(autouse=True)
def exact_fp32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _condition(cfg, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    L, P = cfg.n_motions, cfg.n_prev_motions
    t = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    return WindowCondition(t(2, L, cfg.feature_dim), t(2, cfg.shape_dim), t(2, cfg.d_style),
                           t(2, P, cfg.motion_dim), t(2, P, cfg.feature_dim),
                           torch.ones(2, L, device=device) if cfg.use_indicator else None)


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_guided_x0_on_cuda_matches_cpu(tmp_path, kind):
    from conftest import make_tiny_model_dir

    overrides = {"kind": "student", "student_steps": 1} if kind == "student" else {}
    path = make_tiny_model_dir(tmp_path / kind, **overrides)
    cpu, gpu = load_model_dir(path, "cpu"), load_model_dir(path, "cuda")
    x = torch.randn(2, cpu.config.n_motions, cpu.config.motion_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = cpu.model.guided_x0(x, 7, _condition(cpu.config, "cpu"), Guidance())
        b = gpu.model.guided_x0(x.cuda(), 7, _condition(gpu.config, "cuda"), Guidance())
    np.testing.assert_allclose(b.cpu().numpy(), a.numpy(), atol=TOL)


def test_audio_features_on_cuda_match_cpu(tiny_model_dir):
    cpu, gpu = load_model_dir(tiny_model_dir, "cpu"), load_model_dir(tiny_model_dir, "cuda")
    audio = torch.from_numpy(speechlike(1.6, seed=3))[None]
    with torch.no_grad():
        a = cpu.model.audio_features(audio, 40)
        b = gpu.model.audio_features(audio.cuda(), 40)
    np.testing.assert_allclose(b.cpu().numpy(), a.numpy(), atol=TOL)


def test_animate_cli_on_cuda_matches_cpu(tiny_model_dir, speech_like_wav, tmp_path):
    outs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.npz"
        r = subprocess.run([sys.executable, "-m", "dpt_live.cli", "animate", "--model", str(tiny_model_dir),
                            "--audio", str(speech_like_wav), "--sampler", "ddim", "--steps", "5",
                            "--device", device, "-o", str(out)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs[device] = np.load(out)
    for key in ("exp", "pose"):
        np.testing.assert_allclose(outs["cuda"][key], outs["cpu"][key], atol=5 * TOL)


def test_stream_session_on_cuda_matches_cpu(tiny_model_dir):
    from streaming.factory import build_session
    from streaming.session import StreamConfig

    audio = speechlike(3.0, seed=4)
    frames = {}
    for device in ("cpu", "cuda"):
        loaded = load_model_dir(tiny_model_dir, device)
        sampler = make_sampler("ddim", 2, loaded.model)
        session = build_session(loaded, sampler, Guidance(), StreamConfig(80, 80, 800), backend="torch")
        out = []
        for i in range(0, len(audio), 1280):
            out += session.feed(audio[i:i + 1280])
        out += session.finish()
        frames[device] = np.stack([f.exp for f in out])
    assert frames["cuda"].shape == frames["cpu"].shape
    np.testing.assert_allclose(frames["cuda"], frames["cpu"], atol=5 * TOL)


def test_sessions_on_a_cuda_scheduler_equal_each_alone(tiny_model_dir):
    """The batching scheduler on the GPU: three different sessions sharing calls give what each
    gives alone on the GPU (the same kernels at another batch size: float32 accumulation noise)."""
    from test_scheduler import alone, concurrently, stream_specs

    from diffposetalk.sampler import DDIMSampler
    from streaming.factory import make_scheduler

    loaded = load_model_dir(tiny_model_dir, "cuda")
    specs = stream_specs(loaded)
    ref = alone(loaded, DDIMSampler(2), specs, "torch")
    with make_scheduler(loaded, "torch", gather_ms=500, latency_budget_ms=1e7) as scheduler:
        out = concurrently(scheduler, loaded, DDIMSampler(2), specs)
        stats = scheduler.stats()
    for r, o in zip(ref, out):
        assert not isinstance(o, Exception), o
        np.testing.assert_allclose(o, r, atol=TOL)
    assert max(stats["batch_sizes"]["motion"]) == 3 and stats["errors"] == 0
