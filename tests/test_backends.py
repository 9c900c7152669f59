"""Engine backends agree with PyTorch: the three network calls, guided x0 and whole streaming
sessions, for a tiny teacher and a tiny distilled student; the automatic choice; cache keys."""

from __future__ import annotations

import logging
import sys

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


# --- the GPU path without a GPU: warm-up inputs, profile choice, why TensorRT cannot run, providers ----------

@pytest.mark.parametrize("which", ["teacher", "student"])
def test_warmup_inputs_are_valid_denoiser_inputs(which, request, cache):
    """The first TensorRT enqueue of a shape runs on these: every index in range, so the network
    gives finite output (checked on torch and on the ONNX graph the plan is built from)."""
    from engines.tensorrt_runtime import warmup_inputs

    loaded = request.getfixturevalue(which)
    cfg = loaded.config
    shapes = denoiser_inputs(cfg, 3)
    warm = warmup_inputs({n: (v.shape, v.dtype) for n, v in shapes.items()})
    assert {n: (v.shape, v.dtype) for n, v in warm.items()} == {n: (v.shape, v.dtype) for n, v in shapes.items()}
    assert np.all((warm["step"] >= 1) & (warm["step"] <= cfg.n_diff_steps))
    if "indicator" in warm:
        assert np.all(warm["indicator"] == 1)
    assert all(not v.any() for n, v in warm.items() if n not in ("step", "indicator"))
    for net in (TorchNetworks(loaded.model), networks_for(loaded, "onnxruntime", cache)):
        assert np.isfinite(net.denoise(warm)).all()


def test_select_profile_prefers_fixed_buckets_and_pads_between_them():
    from engines.tensorrt_runtime import pad_rows, profile_is_fixed, select_profile

    def bucket(b):
        return {"motion": ((b, 10, 4), (b, 10, 4)), "step": ((b,), (b,))}

    def shapes(n):
        return {"motion": (n, 10, 4), "step": (n,), "audio_const": (7,)}

    profiles = [bucket(1), bucket(2), bucket(4), {"motion": ((1, 10, 4), (8, 10, 4)), "step": ((1,), (8,))}]
    assert [profile_is_fixed(p) for p in profiles] == [True, True, True, False]
    assert select_profile(profiles, shapes(2)) == (1, shapes(2))  # its own bucket, not the range
    assert select_profile(profiles, shapes(5)) == (3, shapes(5))  # only the range takes 5 as it is
    p, run = select_profile(profiles[:3], shapes(3))  # no bucket of 3: padded to the 4 bucket
    assert p == 2 and run == {**shapes(4), "audio_const": (7,)}
    with pytest.raises(ValueError, match="no optimisation profile"):
        select_profile(profiles[:3], shapes(9))
    with pytest.raises(ValueError, match="no optimisation profile"):
        select_profile(profiles[:3], {"motion": (2, 11, 4), "step": (2,)})
    x = np.arange(6).reshape(3, 2)
    assert pad_rows(x, 3) is x
    np.testing.assert_array_equal(pad_rows(x, 5), np.array([[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]))


def test_padded_rows_leave_the_real_rows_unchanged(teacher):
    """Why padding a batch to its bucket is exact: the denoiser's rows are independent."""
    from engines.tensorrt_runtime import pad_rows

    net, x = TorchNetworks(teacher.model), denoiser_inputs(teacher.config, 2, seed=3)
    padded = net.denoise({n: pad_rows(v, 3) for n, v in x.items()})[:2]
    np.testing.assert_allclose(padded, net.denoise(x), atol=1e-5)


class FakeLibcuda:
    """Stands in for the driver's libcuda.so.1 where these tests need one that loads."""

    def __init__(self, init_result=0, devices=1):
        self.init_result, self.devices = init_result, devices

    def cuInit(self, flags):
        return self.init_result

    def cuDeviceGetCount(self, count_ref):
        count_ref._obj.value = self.devices
        return 0


def _hide_module(monkeypatch, name):
    """importlib finds no ``name`` (as on a machine where it is not installed)."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else find_spec(n, *a))


@pytest.fixture
def fake_packages(monkeypatch, tmp_path):
    """A folder on sys.path for stand-in packages; what they import is forgotten afterwards
    (a real package imported before the test is put back by monkeypatch)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("tensorrt", "pycuda", "pycuda.driver"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("tensorrt", "pycuda"):
            del sys.modules[name]


def _fake_tensorrt_installed(tmp_path):
    """A tensorrt package that imports (what the availability check looks for first)."""
    (tmp_path / "tensorrt").mkdir(exist_ok=True)
    (tmp_path / "tensorrt" / "__init__.py").write_text("__version__ = '10.0.0-test'\n")


def test_missing_libcuda_is_not_reported_as_missing_pycuda(monkeypatch, fake_packages):
    """pycuda installed, no NVIDIA driver: its driver module fails to import exactly as a real
    pycuda does there; the reason names the driver library, not pycuda."""
    import engines.networks as networks
    from engines.gpu_doctor import pycuda_check

    pkg = fake_packages / "pycuda"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VERSION_TEXT = 'test'\n")
    (pkg / "driver.py").write_text("raise ImportError('libcuda.so.1: cannot open shared object file: "
                                   "No such file or directory')\n")
    _fake_tensorrt_installed(fake_packages)

    def no_driver():
        raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(networks, "load_libcuda", no_driver)
    why = backend_unavailable("tensorrt")
    assert "pycuda is not installed" not in why and "tensorrt Python package" not in why
    assert "NVIDIA driver library libcuda.so.1 cannot be loaded" in why
    check = pycuda_check()
    assert not check.ok and "installed, but pycuda.driver does not load" in check.detail
    assert "NVIDIA driver is missing" in check.fix
    assert not networks.cuda_available() or torch.cuda.is_available()


def test_missing_pycuda_with_a_working_driver(monkeypatch, fake_packages):
    import engines.networks as networks

    _hide_module(monkeypatch, "pycuda")
    _fake_tensorrt_installed(fake_packages)
    monkeypatch.setattr(networks, "load_libcuda", lambda: FakeLibcuda())
    assert networks.cuda_driver_problem() is None
    why = backend_unavailable("tensorrt")
    assert why.startswith("pycuda is not installed") and "libcuda" not in why and "builds from source" in why
    monkeypatch.setattr(networks, "load_libcuda", lambda: FakeLibcuda(init_result=100))
    assert "cuInit: CUDA_ERROR_NO_DEVICE" in networks.cuda_driver_problem()
    monkeypatch.setattr(networks, "load_libcuda", lambda: FakeLibcuda(devices=0))
    assert networks.cuda_driver_problem() == "the CUDA driver sees no device"


def test_tensorrt_reasons_here_name_each_missing_piece():
    """On this machine, as it is: every missing piece is named for what it is."""
    import importlib.util

    from engines.networks import cuda_driver_problem

    why = backend_unavailable("tensorrt") or ""
    assert ("tensorrt Python package is not installed" in why) == (importlib.util.find_spec("tensorrt") is None)
    assert ("pycuda is not installed" in why) == (importlib.util.find_spec("pycuda") is None)
    driver = cuda_driver_problem()
    assert driver is None or driver in why


def _identity_graph(path):
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    save(model, path)
    return path


def test_onnxruntime_logs_the_providers_it_got(tmp_path, caplog, teacher, cache):
    """A requested GPU provider that did not load is a warning naming what runs instead."""
    import warnings

    from engines.onnx_runtime import OrtNetworks, make_session
    from export.prepare import OnDemandArtefacts

    caplog.set_level(logging.DEBUG, logger="dpt_live.backends")
    path = _identity_graph(tmp_path / "identity.onnx")
    sess = make_session(path, providers=["CPUExecutionProvider"])
    assert sess.get_providers() == ["CPUExecutionProvider"] and "WARNING" not in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU-only onnxruntime warns that it has no CUDA provider
        sess = make_session(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    lost = [r for r in caplog.records if r.levelno == logging.WARNING]
    if "CUDAExecutionProvider" in sess.get_providers():  # onnxruntime-gpu on a GPU machine
        assert not lost
    else:
        assert len(lost) == 1 and "asked for CUDAExecutionProvider but runs on CPUExecutionProvider" in lost[0].message
        assert "onnxruntime-gpu" in lost[0].message
    caplog.clear()
    nets = OrtNetworks(OnDemandArtefacts(teacher), teacher.config, providers=["CPUExecutionProvider"])
    assert f"onnxruntime fp32: {','.join(nets._denoiser.get_providers())}, 1 intra-op" in caplog.text
