"""Engine backends agree with PyTorch: the three network calls, guided x0 and whole streaming
sessions, for a tiny teacher and a tiny distilled student; the automatic choice; cache keys."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import make_tiny_model_dir

from diffposetalk.errors import UserError
from diffposetalk.model import Guidance, WindowCondition
from diffposetalk.model_dir import load_model_dir
from diffposetalk.sampler import DDIMSampler
from diffposetalk.synth_audio import speechlike
from engines.artefacts import model_hash, trt_cache_key
from engines.networks import BACKEND_NAMES, TorchNetworks, backend_unavailable, choose_backend
from export.onnx_export import denoiser_inputs
from export.prepare import open_networks
from streaming.factory import build_session
from streaming.runner import stream_array
from streaming.session import StreamConfig

CONFIG = StreamConfig(80, 80, 400)  # window 560 ms: 8960 samples, 14 frames
WINDOW = CONFIG.spec().window_samples
AVAILABLE = [b for b in BACKEND_NAMES if b != "torch" and backend_unavailable(b) is None]
TOL = 1e-4  # fp32 graphs vs PyTorch on the same inputs


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Every export of this module goes to a temporary cache (not the user's ~/.cache)."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPT_LIVE_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def teacher(tiny_model_dir):
    return load_model_dir(tiny_model_dir)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    path = make_tiny_model_dir(tmp_path_factory.mktemp("student") / "s", seed=3, kind="student", student_steps=1,
                               n_motions=8)
    loaded = load_model_dir(path)
    # a student straight from init has a zero guidance branch: give it weights so the guidance
    # input really changes the output (and a wrong wiring of that input shows)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in loaded.model.denoising_net.guidance_map.parameters():
            p.normal_(0, 0.3)
    return loaded


def networks_for(loaded, name, cache):
    return open_networks(loaded, name, "fp32", threads=1)


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_network_calls_match_torch(backend, which, request, cache):
    loaded = request.getfixturevalue(which)
    ref, net = TorchNetworks(loaded.model), networks_for(loaded, backend, cache)
    audio = speechlike(WINDOW / 16000, seed=2)
    audio = (audio - audio.mean()) / audio.std()
    diffs = {"audio": np.abs(net.audio_features(audio) - ref.audio_features(audio)).max()}
    assert net.audio_features(audio).shape == (WINDOW // 640, loaded.config.feature_dim)
    k = 1 if which == "student" else 3
    for batch in sorted({1, k}):
        x = denoiser_inputs(loaded.config, batch, seed=batch)
        out = net.denoise(x)
        assert out.shape == (batch, loaded.config.seq_len, loaded.config.motion_dim)
        diffs[f"denoise b{batch}"] = np.abs(out - ref.denoise(x)).max()
    motion = np.random.default_rng(1).normal(size=(1, 100, loaded.config.motion_dim)).astype(np.float32)
    diffs["style"] = np.abs(net.style(motion) - ref.style(motion)).max()
    print(f"{backend} {which}: max |backend - torch| " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) < TOL, diffs


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_guided_x0_and_sampler_match_torch(backend, which, request, cache):
    """The guided denoiser and the sampler run unchanged over the backend's network pass."""
    loaded = request.getfixturevalue(which)
    cfg, model = loaded.config, loaded.model
    networks = networks_for(loaded, backend, cache)
    net = networks.network_pass()
    assert net is not model.denoising_net
    g = torch.Generator().manual_seed(0)
    L, F = cfg.n_motions, cfg.feature_dim
    cond = WindowCondition(torch.randn(1, L, F, generator=g), torch.randn(1, 100, generator=g),
                           torch.randn(1, cfg.d_style, generator=g), torch.randn(1, cfg.n_prev_motions, cfg.motion_dim,
                                                                                  generator=g),
                           torch.randn(1, cfg.n_prev_motions, F, generator=g), torch.ones(1, L))
    x_T = torch.randn(1, L, cfg.motion_dim, generator=g)
    for guidance in (Guidance(), Guidance(scales={"audio": 2.0, "style": 1.5}, dynamic_threshold=(0.9, 1.0, 4.0))):
        with torch.no_grad():
            ref = model.guided_x0(x_T, 7, cond, guidance)
            out = model.guided_denoiser(cond, guidance, net)(x_T, 7)
            ref_s = DDIMSampler(2).sample(model, model.guided_denoiser(cond, guidance), x_T)
            out_s = DDIMSampler(2).sample(model, model.guided_denoiser(cond, guidance, net), x_T)
        assert (out - ref).abs().max() < TOL and (out_s - ref_s).abs().max() < TOL
    # the guidance scales reach the network: different scales, different output
    with torch.no_grad():
        other = model.guided_denoiser(cond, Guidance(scales={"audio": 1.0, "style": 0.0}), net)(x_T, 7)
    assert (other - out).abs().max() > 1e-3
    style = np.random.default_rng(0).normal(size=(2, 100, cfg.motion_dim)).astype(np.float32)
    s_ref = torch.from_numpy(TorchNetworks(model).style(style))
    s_out = torch.from_numpy(networks.style(style))
    assert (s_out - s_ref).abs().max() < TOL


def stream(loaded, backend, precision="fp32", seconds=2.4, style="calm"):
    sampler = DDIMSampler(1 if loaded.config.kind == "student" else 2)
    vec = loaded.styles.get(style) if style else None
    session = build_session(loaded, sampler, Guidance(), CONFIG, vec, backend=backend, precision=precision)
    audio = speechlike(seconds, seed=4)
    frames = stream_array(session, audio, 320)
    return session, np.stack([f.motion for f in frames]), np.stack([f.exp for f in frames])


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_streaming_session_matches_torch(backend, which, request, cache):
    loaded = request.getfixturevalue(which)
    _, ref, ref_exp = stream(loaded, "torch")
    session, out, exp = stream(loaded, backend)
    assert session.backend == f"{backend} (fp32)"
    diff = np.abs(out - ref).max()
    print(f"{backend} {which}: {len(out)} frames, max |motion - torch| {diff:.2e}, "
          f"max |exp - torch| {np.abs(exp - ref_exp).max():.2e}")
    assert out.shape == ref.shape == (60, loaded.config.motion_dim)
    assert diff < 1e-3


def test_int8_session_is_close_but_quantised(teacher, cache):
    from training.evaluate import lip_error

    _, ref, ref_exp = stream(teacher, "onnxruntime")
    session, out, exp = stream(teacher, "onnxruntime", "int8")
    assert session.backend == "onnxruntime (int8)"
    graphs = sorted(p.name for p in cache.glob("onnx/*/*.int8.onnx"))
    assert graphs == ["audio_8960.int8.onnx", "denoiser.int8.onnx"]
    stats = {k: v.numpy() for k, v in teacher.stats.items()}
    pose0 = np.zeros((len(exp), 6), np.float32)
    err = lip_error({"exp": exp, "pose": pose0}, {"exp": ref_exp, "pose": pose0}, stats)
    print(f"int8 vs fp32: max |motion| diff {np.abs(out - ref).max():.3f}, exp-lip error {err:.4f}")
    assert 0 < np.abs(out - ref).max() < 1.0  # quantised (not the fp32 graph), yet the same motion
    assert err < 0.25


def test_style_crossfade_to_null_changes_cfg_batch(teacher, cache):
    """Fading to no style drops the style pass (batch 3 -> 2): the fixed-shape graph serves both."""
    sessions = {}
    for backend in ("torch", "onnxruntime"):
        session = build_session(teacher, DDIMSampler(1), Guidance(), CONFIG, teacher.styles["calm"], backend=backend)
        audio = speechlike(2.0, seed=6)
        frames = session.feed(audio[:16000])
        session.set_style(None)
        frames += session.feed(audio[16000:]) + session.finish()
        sessions[backend] = np.stack([f.motion for f in frames])
    assert np.abs(sessions["onnxruntime"] - sessions["torch"]).max() < 1e-3


def test_auto_choice_and_unavailable_backends(teacher, cache, caplog):
    caplog.set_level(logging.INFO, logger="dpt_live.backends")
    expected = "tensorrt" if "tensorrt" in AVAILABLE else "onnxruntime"
    assert choose_backend("auto") == expected
    assert f"backend auto -> {expected}" in caplog.text
    assert choose_backend("auto", "int8") == "onnxruntime"
    assert choose_backend("torch") == "torch"
    if "tensorrt" not in AVAILABLE:
        why = backend_unavailable("tensorrt")
        assert "tensorrt" in why or "pycuda" in why or "CUDA" in why
        with pytest.raises(UserError, match="backend 'tensorrt' cannot run here"):
            build_session(teacher, DDIMSampler(1), Guidance(), CONFIG, backend="tensorrt")
    with pytest.raises(UserError, match="unknown backend"):
        build_session(teacher, DDIMSampler(1), Guidance(), CONFIG, backend="cuda")
    with pytest.raises(UserError, match="the torch backend runs fp32"):
        open_networks(teacher, "torch", "int8")
    with pytest.raises(UserError, match="onnxruntime backend runs fp32/int8, not fp16"):
        open_networks(teacher, "onnxruntime", "fp16")


def test_auto_falls_back_to_torch_when_the_cache_is_unusable(teacher, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # the cache root is a file: nothing can be exported under it
    monkeypatch.setenv("DPT_LIVE_CACHE", str(blocker))
    with pytest.raises(UserError, match="cannot create the ONNX cache"):
        build_session(teacher, DDIMSampler(1), Guidance(), CONFIG, backend="onnxruntime")
    caplog.set_level(logging.WARNING, logger="dpt_live.stream")
    session = build_session(teacher, DDIMSampler(1), Guidance(), CONFIG, backend="auto")
    assert session.backend == "torch (fp32)"
    assert "using torch" in caplog.text


def test_graphs_of_another_model_are_refused(teacher, tmp_path):
    other = load_model_dir(make_tiny_model_dir(tmp_path / "other", seed=9))
    open_networks(other, "onnxruntime", cache_dir=tmp_path / "g")  # exports the other model's denoiser
    with pytest.raises(UserError, match="was exported from another model"):
        open_networks(teacher, "onnxruntime", cache_dir=tmp_path / "g")


def test_model_hash_follows_the_weights(teacher, tiny_model_dir):
    again = load_model_dir(tiny_model_dir)
    assert model_hash(again.model) == model_hash(teacher.model)
    with torch.no_grad():
        again.model.denoising_net.motion_dec[2].bias[0] += 1e-6
    assert model_hash(again.model) != model_hash(teacher.model)


def test_trt_cache_key_names_every_ingredient():
    base = dict(gpu_name="NVIDIA H200", compute_capability=(9, 0), trt_version="10.7.0", model_key="abcd",
                graph="denoiser.onnx", precision="fp32")
    key = trt_cache_key(**base)
    assert key == trt_cache_key(**{**base, "compute_capability": "9.0"})  # same capability either way
    assert key.startswith("nvidia-h200_sm90_trt10.7.0_")
    variants = [{"gpu_name": "NVIDIA L4"}, {"compute_capability": (8, 9)}, {"trt_version": "11.0.0"},
                {"model_key": "abce"}, {"graph": "audio_28160.onnx"}, {"precision": "fp16"}]
    keys = {trt_cache_key(**{**base, **v}) for v in variants}
    assert key not in keys and len(keys) == len(variants)


@pytest.mark.skipif("tensorrt" in AVAILABLE, reason="checks the no-GPU error path")
def test_tensorrt_without_gpu_is_a_clear_error(teacher):
    with pytest.raises(UserError, match="cannot run here"):
        open_networks(teacher, "tensorrt")


@pytest.mark.skipif("tensorrt" not in AVAILABLE,
                    reason=f"TensorRT backend unavailable here: {backend_unavailable('tensorrt')}")
def test_tensorrt_fp16_session_close_to_torch(teacher, cache):
    _, ref, _ = stream(teacher, "torch")
    _, out, _ = stream(teacher, "tensorrt", "fp16")
    assert np.abs(out - ref).max() < 0.1


def test_stream_command_backend_flag(tiny_model_dir, speech_like_wav, tmp_path, cache, capsys):
    import json

    from dpt_live.cli import main

    base = ["stream", "--model", str(tiny_model_dir), "--audio", str(speech_like_wav), "--hop-ms", "160",
            "--context-ms", "400", "--steps", "1"]
    for backend, precision in (("onnxruntime", "int8"), ("auto", "fp32")):
        out, report = tmp_path / f"{backend}.npz", tmp_path / f"{backend}.json"
        assert main(base + ["--backend", backend, "--precision", precision, "-o", str(out),
                            "--report", str(report)]) == 0
        assert json.loads(report.read_text())["backend"] == f"onnxruntime ({precision})"
        assert np.load(out)["exp"].shape == (132, 50)
    if "tensorrt" not in AVAILABLE:
        assert main(base + ["--backend", "tensorrt", "-o", str(tmp_path / "t.npz")]) == 2
        assert "backend 'tensorrt' cannot run here" in capsys.readouterr().err
