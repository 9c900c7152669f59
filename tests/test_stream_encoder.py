"""The streaming audio encoder (diffposetalk/stream_encoder.py): exact state carrying, its use by
sessions (alone, on ONNX Runtime, on the batching scheduler), its model-directory form, and
`dpt-live distill-encoder` end to end."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from diffposetalk.stream_encoder import StreamEncoder, align_final, tiny_stream_config
from diffposetalk.units import FRAME_SAMPLES, SAMPLE_RATE


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    from diffposetalk.synth_audio import speechlike as make

    return make(seconds, seed=seed).astype(np.float32)


@pytest.fixture(scope="module")
def enc_model_dir(tmp_path_factory):
    """A tiny student whose streaming encoder has random (non-zero) weights."""
    from conftest import make_tiny_model_dir

    path = tmp_path_factory.mktemp("enc") / "m"
    return make_tiny_model_dir(path, seed=4, kind="student", student_steps=1, n_motions=8,
                               stream_encoder=tiny_stream_config(32).to_dict())


@pytest.fixture(scope="module")
def enc_loaded(enc_model_dir):
    from diffposetalk.model_dir import load_model_dir

    return load_model_dir(enc_model_dir)


@torch.no_grad()
def test_streamed_chunks_equal_one_shot_run():
    torch.manual_seed(0)
    enc = StreamEncoder(tiny_stream_config(24)).eval()
    audio = torch.from_numpy(speechlike(2.0)).reshape(1, -1)[:, :50 * FRAME_SAMPLES]
    audio = torch.cat([audio, -audio.flip(1)])  # two distinct rows
    final, prov = enc(audio)
    state = enc.initial_state(2)
    got_f, got_p, at = [], [], 0
    for n in [4, 2, 1, 3, 2, 2, 7, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 5]:  # past the cache length, uneven
        f, p, state = enc.step(audio[:, at * FRAME_SAMPLES:(at + n) * FRAME_SAMPLES], state)
        got_f.append(f)
        got_p.append(p)
        at += n
    assert at == 50
    assert torch.allclose(torch.cat(got_f, 1), final, atol=1e-5)
    assert torch.allclose(torch.cat(got_p, 1), prov, atol=1e-5)
    # the state really carries the past: a fresh state on the last chunk gives other features
    f_fresh, _, _ = enc.step(audio[:, -5 * FRAME_SAMPLES:], enc.initial_state(2))
    assert (f_fresh - final[:, -5:]).abs().max() > 1e-3


@torch.no_grad()
def test_peek_rows_are_a_silent_continuation_and_leave_the_state_alone():
    torch.manual_seed(1)
    enc = StreamEncoder(tiny_stream_config(24)).eval()
    audio = torch.from_numpy(speechlike(1.0)).reshape(1, -1)[:, :12 * FRAME_SAMPLES]
    state = enc.step(audio[:, :8 * FRAME_SAMPLES], enc.initial_state(1))[2]
    chunk = audio[:, 8 * FRAME_SAMPLES:]
    f0, p0, s0 = enc.step(chunk, state)
    f1, p1, s1 = enc.step(chunk, state, peek=2)
    assert f1.shape[1] == 6 and torch.allclose(f1[:, :4], f0, atol=1e-6) and torch.allclose(s1, s0, atol=1e-6)
    silent = torch.cat([chunk, torch.zeros(1, 2 * FRAME_SAMPLES)], 1)
    f2, _, _ = enc.step(silent, state)
    assert torch.allclose(f1, f2, atol=1e-5)


def test_model_dir_round_trip_and_bad_config(enc_loaded, tmp_path):
    from diffposetalk.config import ModelConfig
    from diffposetalk.model_dir import load_model_dir, save_model_dir
    from diffposetalk.safe_pickle import CheckpointError

    assert enc_loaded.model.stream_encoder is not None
    stats = {k: v.numpy() for k, v in enc_loaded.stats.items()}
    save_model_dir(tmp_path / "copy", enc_loaded.config, enc_loaded.model, stats)
    again = load_model_dir(tmp_path / "copy")
    assert again.config.stream_encoder == enc_loaded.config.stream_encoder
    for k, v in enc_loaded.model.stream_encoder.state_dict().items():
        assert torch.equal(v, again.model.stream_encoder.state_dict()[k])
    # the encoder is a file of its own: the rest of the model's weights file is unchanged by it
    from safetensors.torch import load_file

    assert not any(k.startswith("stream_encoder.") for k in load_file(str(tmp_path / "copy" / "weights.safetensors")))
    (tmp_path / "copy" / "stream_encoder.safetensors").unlink()
    with pytest.raises(CheckpointError, match="stream_encoder.safetensors"):
        load_model_dir(tmp_path / "copy")
    data = json.loads((tmp_path / "copy" / "config.json").read_text())
    data["stream_encoder"]["out_dim"] = 7
    with pytest.raises(CheckpointError, match="out_dim"):
        ModelConfig.from_dict(data)


class Recording:
    """A motion engine wrapper that keeps the audio features of each step's emitted frames."""

    def __init__(self, inner, hop):
        self.inner, self.hop, self.feats = inner, hop, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def sample(self, audio_feat, *args):
        self.feats.append(np.array(audio_feat[:self.hop]))
        return self.inner.sample(audio_feat, *args)


def test_session_features_equal_offline_run_of_the_training_input(enc_loaded):
    """What a live session feeds the denoiser for its emitted frames is the encoder's one-shot run
    over the stream-normalised audio (training/distill_encoder.stream_normalise): training input
    and serving input are the same."""
    from diffposetalk.model import Guidance
    from streaming.factory import open_session
    from streaming.runner import stream_array
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler
    from training.distill_encoder import stream_normalise

    audio = speechlike(3.0, seed=2)[:70 * FRAME_SAMPLES]
    # the speech gate in front of it is tested on its own (tests/test_speech_gate.py); here the
    # session's input path must be exactly the training one
    session = open_session(enc_loaded, pick_sampler("ddim", None, enc_loaded), Guidance(), StreamConfig(speech_gate=False))
    assert session.audio_encoder == "stream"
    rec = Recording(session.motion, session.spec.hop)
    session.motion = rec
    stream_array(session, audio, 320)
    got = np.concatenate(rec.feats)[:70]
    delay = enc_loaded.model.stream_encoder.cfg.delay
    x = torch.from_numpy(stream_normalise(audio, 2, 2, delay))[None]
    with torch.no_grad():
        final, _ = enc_loaded.model.stream_encoder(x)
    want = final[0, delay:delay + 70].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_window_encoder_still_selectable(enc_loaded):
    from diffposetalk.errors import UserError
    from diffposetalk.model import Guidance
    from streaming.factory import open_session
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler

    sampler = pick_sampler("ddim", None, enc_loaded)
    s = open_session(enc_loaded, sampler, Guidance(), StreamConfig(audio_encoder="window"))
    assert s.audio_encoder == "window"
    cfg = StreamConfig(audio_encoder="stream")
    assert cfg.uses_stream_encoder(True)
    with pytest.raises(UserError, match="no streaming audio encoder"):
        cfg.uses_stream_encoder(False)


def test_onnx_stream_graph_matches_torch_with_state(enc_loaded, tmp_path):
    pytest.importorskip("onnxruntime")
    from engines.artefacts import read_record
    from engines.networks import TorchNetworks
    from engines.onnx_runtime import make_session
    from export.onnx_export import export_stream_audio, stream_parity_inputs

    rec = export_stream_audio(enc_loaded.model, tmp_path, 2 * FRAME_SAMPLES)
    assert rec.max_abs_diff < 1e-4
    assert read_record(tmp_path / rec.file).inputs["state"][0] == "N"
    sess = make_session(tmp_path / rec.file)
    torch_nets = TorchNetworks(enc_loaded.model)
    audio, state = stream_parity_inputs(enc_loaded.model, 2 * FRAME_SAMPLES, rows=4)
    # carried over several steps: each step's state output is the next one's input
    for _ in range(3):
        want = torch_nets.stream_audio_batch(audio, state)
        got = sess.run(None, {"audio": audio, "state": state})
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-4)
        state = got[2]
        audio = audio[:, ::-1].copy()


def test_onnx_batch_one_session_pins_the_batch_axis_and_matches_torch(enc_loaded, tmp_path):
    """A session's own encoder calls (one row) run a session with the batch axis pinned to 1 (ORT
    folds the shape arithmetic away); it must give what torch gives, state carried, and the
    dynamic-batch session must still take several rows."""
    pytest.importorskip("onnxruntime")
    from engines.networks import TorchNetworks
    from engines.onnx_runtime import make_session
    from export.onnx_export import export_stream_audio, stream_parity_inputs

    rec = export_stream_audio(enc_loaded.model, tmp_path, 2 * FRAME_SAMPLES)
    pinned = make_session(tmp_path / rec.file, fixed_dims={"N": 1})
    dynamic = make_session(tmp_path / rec.file)
    torch_nets = TorchNetworks(enc_loaded.model)
    audio, state = stream_parity_inputs(enc_loaded.model, 2 * FRAME_SAMPLES, rows=3)
    a, s = audio[1:2], state[1:2]
    for _ in range(3):
        want = torch_nets.stream_audio_batch(a, s)
        got = pinned.run(None, {"audio": a, "state": s})
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-4)
        s, a = got[2], a[:, ::-1].copy()
    assert dynamic.run(None, {"audio": audio, "state": state})[0].shape[0] == 3
    with pytest.raises(Exception, match="dimension"):  # the pinned one refuses another batch size
        pinned.run(None, {"audio": audio, "state": state})


def test_streaming_features_bookkeeping_final_over_provisional_and_shed_chunks(monkeypatch):
    """The ring of a session's features: final features win over provisional ones, the newest
    frames are replaced by the next chunk's, and a shed chunk's frames repeat the frame before."""
    from types import SimpleNamespace

    import streaming.motion as motion_mod
    from streaming.motion import StepShed, StreamingAudioFeatures

    class Fake(StreamingAudioFeatures):
        shed = False

        def _run(self, audio, state):  # final = frame index + 0.5, provisional = -(frame index)
            if self.shed:
                raise StepShed("shed")
            n = len(audio) // FRAME_SAMPLES
            E = self.pushed - n
            rows = np.arange(n + 2, dtype=np.float32)
            final = np.repeat((E - 2 + rows + 0.5)[:, None], 3, 1)
            prov = np.repeat(-(E + rows)[:, None], 3, 1)
            return final, prov, state

    monkeypatch.setattr(motion_mod, "stream_config", lambda cfg: SimpleNamespace(delay=2))
    f = Fake(SimpleNamespace(cfg=SimpleNamespace(feature_dim=3), stream_state_size=lambda: 4),
             16 * FRAME_SAMPLES, 4 * FRAME_SAMPLES, 2 * FRAME_SAMPLES)
    hop = np.zeros(2 * FRAME_SAMPLES, np.float32)
    f.push(np.zeros(4 * FRAME_SAMPLES, np.float32))  # frames 0..3: final for all (the last 2 peeked)
    np.testing.assert_array_equal(f.frames(0, 6)[:, 0], [0.5, 1.5, 2.5, 3.5, -4, -5])
    f.push(hop)  # frames 4, 5
    np.testing.assert_array_equal(f.frames(2, 8)[:, 0], [2.5, 3.5, 4.5, 5.5, -6, -7])
    f.shed = True
    with pytest.raises(StepShed):
        f.push(hop)  # frames 6, 7 shed: they keep what the last chunk gave, then the last repeats
    np.testing.assert_array_equal(f.frames(4, 10)[:, 0], [4.5, 5.5, -6, -7, -7, -7])
    assert f.pushed == 8
    f.shed = False
    for _ in range(60):  # far past the ring: old frames are gone, new ones right
        f.push(hop)
    np.testing.assert_array_equal(f.frames(f.pushed - 4, f.pushed)[:, 0], np.arange(f.pushed - 4, f.pushed) + 0.5)
    assert not f.frames(0, 4).any()  # frames older than the ring: unknown (zeros)


def _frames(session, audio):
    from streaming.runner import stream_array

    return np.stack([f.motion for f in stream_array(session, audio, 640)])


def _frames_at_once(sessions, audios):
    """Each session streams its audio from a thread of its own, all at once (a scheduler batches
    them); their frames' motion, in session order."""
    from conftest import run_in_threads

    out = [None] * len(sessions)

    def run(i):
        out[i] = _frames(sessions[i], audios[i])

    run_in_threads(run, len(sessions))
    return out


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_scheduler_batched_sessions_equal_each_alone(enc_loaded, backend):
    """Three sessions on one scheduler (their encoder states rows of one call) give what each
    gives alone, and the onnxruntime backend what torch gives."""

    from diffposetalk.model import Guidance
    from streaming.factory import build_session, make_scheduler
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler

    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    sampler = pick_sampler("ddim", None, enc_loaded)
    audios = [speechlike(1.6, seed=s)[:40 * FRAME_SAMPLES] for s in range(3)]
    alone = [_frames(build_session(enc_loaded, sampler, Guidance(), StreamConfig(seed=i), backend=backend), a)
             for i, a in enumerate(audios)]
    if backend == "onnxruntime":
        ref = _frames(build_session(enc_loaded, sampler, Guidance(), StreamConfig(seed=0), backend="torch"), audios[0])
        np.testing.assert_allclose(alone[0], ref, atol=1e-3)
    with make_scheduler(enc_loaded, backend, gather_ms=20, shed=False, workers=1) as sched:
        sessions = [build_session(enc_loaded, sampler, Guidance(), StreamConfig(seed=i), scheduler=sched)
                    for i in range(3)]
        # on ONNX Runtime a student's DDIM windows run as numpy arrays (ArrayWindow), on torch as tensors
        assert all(s.motion.arrays == (backend == "onnxruntime") for s in sessions)
        out = _frames_at_once(sessions, audios)
        stats = sched.stats()
    for got, want in zip(out, alone):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert max(int(k) for k in stats["batch_sizes"]["audio"]) > 1  # states really were batched


def test_align_final_uses_provisional_for_the_newest_frames():
    f = torch.arange(6.0).reshape(1, 6, 1)
    p = -torch.arange(6.0).reshape(1, 6, 1)
    assert align_final(f, p, 2)[0, :, 0].tolist() == [2, 3, 4, 5, -4, -5]


def test_encoder_sizes_and_the_bundled_one():
    """--encoder small is the bundled student's: fewer weights and state than default, and the
    bundled model directory carries exactly that configuration and those weights."""
    from diffposetalk.errors import UserError
    from diffposetalk.model_dir import load_model_dir
    from diffposetalk.paths import DEFAULT_STREAM_MODEL
    from diffposetalk.stream_encoder import state_size
    from training.distill_encoder import encoder_config

    sizes = {}
    for kind in ("default", "small"):
        cfg = encoder_config(kind, 128)
        sizes[kind] = (sum(p.numel() for p in StreamEncoder(cfg).parameters()), state_size(cfg))
    assert sizes["small"][0] < 0.5 * sizes["default"][0] and sizes["small"][1] < 0.6 * sizes["default"][1]
    loaded = load_model_dir(DEFAULT_STREAM_MODEL)
    assert loaded.config.stream_encoder == encoder_config("small", loaded.config.feature_dim).to_dict()
    bundled = sum(p.numel() for n, p in loaded.model.named_parameters() if n.startswith("stream_encoder."))
    assert bundled == sizes["small"][0]
    with pytest.raises(UserError, match="default, small or tiny"):
        encoder_config("huge", 128)


def test_distill_encoder_end_to_end_with_resume(tiny_model_dir, tmp_path):
    import soundfile as sf

    from diffposetalk.model_dir import load_model_dir
    from dpt_live.cli import main

    voices = tmp_path / "voices"
    voices.mkdir()
    for i in range(3):
        sf.write(voices / f"v{i}.wav", 0.3 * speechlike(2.0, seed=10 + i), 16000)
    out = tmp_path / "enc"
    args = ["distill-encoder", "--teacher", str(tiny_model_dir), "--audio", str(voices), "-o", str(out),
            "--encoder", "tiny", "--batch", "2", "--frames", "24", "--val-clips", "1", "--val-every", "2",
            "--save-every", "2", "--quiet"]
    assert main([*args, "--iters", "2"]) == 0
    first = load_model_dir(out)
    assert first.model.stream_encoder is not None
    state = json.loads((out / "train_state.json").read_text())
    assert state["step"] == 2
    assert main([*args, "--iters", "4", "--resume"]) == 0
    assert json.loads((out / "train_state.json").read_text())["step"] == 4
    second = load_model_dir(out)
    moved = [not torch.equal(v, second.model.stream_encoder.state_dict()[k])
             for k, v in first.model.stream_encoder.state_dict().items()]
    assert any(moved)
    # the rest of the model is the teacher's, unchanged
    teacher = load_model_dir(tiny_model_dir)
    for k, v in teacher.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k])
    # changing what is trained across --resume is refused
    assert main([*args, "--iters", "6", "--resume", "--frames", "32"]) == 2


def test_tensorrt_stream_plan_carries_state_like_torch(enc_loaded, tmp_path):
    """The TensorRT plan of the streaming encoder (state input and output) against PyTorch over
    several carried steps. Skipped where TensorRT cannot run (no GPU, no tensorrt/pycuda)."""
    from engines.networks import TorchNetworks, backend_unavailable

    why = backend_unavailable("tensorrt")
    if why is not None:
        pytest.skip(f"TensorRT unavailable: {why}")
    from export.onnx_export import stream_parity_inputs
    from export.prepare import open_networks

    trt_nets = open_networks(enc_loaded, "tensorrt", "fp32", cache_dir=tmp_path)
    torch_nets = TorchNetworks(enc_loaded.model)
    audio, state = stream_parity_inputs(enc_loaded.model, 2 * FRAME_SAMPLES, rows=3)
    s_trt = s_torch = state
    for _ in range(3):
        got, want = trt_nets.stream_audio_batch(audio, s_trt), torch_nets.stream_audio_batch(audio, s_torch)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=2e-3)
        s_trt, s_torch = got[2], want[2]


def test_cuda_stream_encoder_matches_cpu(enc_model_dir):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to PyTorch")
    from diffposetalk.model_dir import load_model_dir
    from engines.networks import TorchNetworks
    from export.onnx_export import stream_parity_inputs

    cpu, gpu = load_model_dir(enc_model_dir, "cpu"), load_model_dir(enc_model_dir, "cuda")
    audio, state = stream_parity_inputs(cpu.model, 2 * FRAME_SAMPLES)
    for g, w in zip(TorchNetworks(gpu.model).stream_audio_batch(audio, state),
                    TorchNetworks(cpu.model).stream_audio_batch(audio, state)):
        np.testing.assert_allclose(g, w, atol=2e-3)


def test_bench_stream_encoder_variant():
    from bench.archs import arch_config

    cfg = arch_config("full+student+stream-encoder")
    assert cfg.kind == "student" and cfg.stream_encoder["out_dim"] == cfg.feature_dim == 512
    assert arch_config("demo+stream-encoder").stream_encoder["d_model"] == 128


def test_the_speech_gate_stands_in_front_of_the_streaming_encoder(enc_loaded):
    """Room tone reaches the streaming encoder as silence, chunk by chunk, as it reaches HuBERT's
    window (tests/test_speech_gate.py): the chunks pushed equal those of digital silence."""
    from diffposetalk.model import Guidance
    from streaming.factory import open_session
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler

    def pushed(audio, gate):
        session = open_session(enc_loaded, pick_sampler("ddim", None, enc_loaded), Guidance(),
                               StreamConfig(speech_gate=gate))
        assert session.audio_encoder == "stream"
        seen, push = [], session.audio.push
        session.audio.push = lambda chunk: seen.append(chunk.copy()) or push(chunk)
        session.feed(audio)
        return np.concatenate(seen)

    tone = np.random.default_rng(0).normal(scale=1e-3, size=2 * SAMPLE_RATE).astype(np.float32)  # -60 dBFS
    zeros = pushed(np.zeros_like(tone), True)
    np.testing.assert_array_equal(pushed(tone, True), zeros)
    assert np.abs(pushed(tone, False)).max() > 1e-3


def test_scheduled_streaming_steps_drop_under_overload_and_recover(enc_loaded):
    """A streaming-encoder session on the scheduler hands over each step as one request (audio,
    then the window built in the worker, then motion); past its deadline the step is dropped —
    continuation frames, flagged — and the stream recovers when the load falls."""
    from diffposetalk.model import Guidance
    from streaming.factory import build_session, make_scheduler
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler

    sampler = pick_sampler("ddim", None, enc_loaded)
    audio = speechlike(2.4, seed=4)

    def feed(session, x):
        out = []
        for i in range(0, len(x), 320):
            out += session.feed(x[i:i + 320])
        return out

    with make_scheduler(enc_loaded, "torch", latency_budget_ms=1e7) as sched:
        session = build_session(enc_loaded, sampler, Guidance(), StreamConfig(), scheduler=sched)
        assert session.streaming_audio and hasattr(session.motion, "sample_after_features")
        frames = feed(session, audio[:16000])
        sched.latency_budget_s = -1.0  # every step past its deadline
        held = feed(session, audio[16000:24000])
        sched.latency_budget_s = 1e4
        after = feed(session, audio[24000:]) + session.finish()
        stats = sched.stats()
    assert all(f.shed is None for f in frames) and all(f.shed is None for f in after)
    assert held and all(f.shed == "dropped" for f in held)
    got = [f.index for f in frames + held + after]
    assert got == list(range(len(got)))
    assert np.isfinite(np.stack([f.motion for f in frames + held + after])).all()
    assert stats["shed"]["dropped"] == session.shed_steps["dropped"] > 0
    assert stats["calls"]["audio"] >= 10 and stats["calls"]["motion"] >= 10


def test_array_windows_with_a_style_equal_the_torch_path(enc_loaded):
    """A student's numpy windows (ArrayWindow) with a style and its guidance scales give what the
    torch sampler gives over the same ONNX Runtime pass, each session alone."""

    from diffposetalk.model import Guidance
    from streaming.factory import build_session, make_scheduler
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler

    pytest.importorskip("onnxruntime")
    sampler = pick_sampler("ddim", None, enc_loaded)
    d_style = enc_loaded.model.null_style_feat.shape[-1]
    styles = [np.random.default_rng(i).normal(0, 1, d_style).astype(np.float32) for i in range(2)]
    guidance = Guidance(scales={"audio": 1.3, "style": 2.5})
    audios = [speechlike(1.6, seed=10 + i)[:40 * FRAME_SAMPLES] for i in range(2)]
    alone = [_frames(build_session(enc_loaded, sampler, guidance, StreamConfig(seed=i), styles[i],
                                   backend="onnxruntime"), audios[i]) for i in range(2)]
    with make_scheduler(enc_loaded, "onnxruntime", gather_ms=20, shed=False, workers=1) as sched:
        sessions = [build_session(enc_loaded, sampler, guidance, StreamConfig(seed=i), styles[i], scheduler=sched)
                    for i in range(2)]
        assert all(s.motion.arrays for s in sessions)
        out = _frames_at_once(sessions, audios)
    for got, want in zip(out, alone):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(out[0][:len(out[1])], out[1][:len(out[0])], atol=1e-3)  # the styles differ


def _drain(session):
    """Wait until an asynchronous session's steps begun so far are done."""
    with session._lock:
        while session._in_flight:
            session._lock.wait()


def test_asynchronous_steps_equal_synchronous_ones_fed_from_one_thread(enc_loaded):
    """Sessions on the scheduler with asynchronous steps (run_async), all fed from one thread as
    the server's event loop feeds upstream sessions: feed() returns at once, the frames reach the
    sink in order, with a style change on the way, and equal each session's synchronous frames."""
    from diffposetalk.model import Guidance
    from streaming.factory import build_session, make_scheduler
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler

    sampler = pick_sampler("ddim", None, enc_loaded)
    d_style = enc_loaded.model.null_style_feat.shape[-1]
    style = np.random.default_rng(3).normal(0, 1, d_style).astype(np.float32)
    audios = [speechlike(1.9, seed=20 + i) for i in range(3)]

    def sync_frames(i):
        s = build_session(enc_loaded, sampler, Guidance(), StreamConfig(seed=i))
        out = []
        for j in range(0, len(audios[i]), 320):
            if j == 8000:
                s.set_style(style)
            out += s.feed(audios[i][j:j + 320])
        return np.stack([f.motion for f in out + s.finish()])

    want = [sync_frames(i) for i in range(3)]
    with make_scheduler(enc_loaded, "torch", gather_ms=5, shed=False) as sched:
        sessions = [build_session(enc_loaded, sampler, Guidance(), StreamConfig(seed=i), scheduler=sched)
                    for i in range(3)]
        sinks = [[] for _ in sessions]
        assert all(s.run_async(sink.extend) for s, sink in zip(sessions, sinks))
        from streaming.session import MAX_CHUNK
        # a block the feeder could take without waiting; one over a piece could wait for its own step
        assert sessions[0].can_take(320) and not sessions[0].can_take(MAX_CHUNK + 640)
        for j in range(0, max(len(a) for a in audios), 320):
            for s, a in zip(sessions, audios):
                if j == 8000:  # from the same frame as above: once the steps begun so far are done
                    _drain(s)
                    s.set_style(style)
                if j < len(a):
                    assert s.feed(a[j:j + 320]) == []
        for s in sessions:
            s.end()
        assert all(s.finish() == [] for s in sessions)
    for sink, w in zip(sinks, want):
        assert [f.index for f in sink] == list(range(len(w)))
        np.testing.assert_allclose(np.stack([f.motion for f in sink]), w, atol=1e-5)


def test_asynchronous_steps_are_shed_at_their_last_moment_and_a_failure_reaches_the_feeder(enc_loaded):
    """Asynchronous steps past their deadline are dropped (continuation frames, flagged) by the
    scheduler with no thread of the session waiting, the stream recovers; an error in a step is
    raised to the feeding thread at its next feed, not lost in a worker."""
    from diffposetalk.model import Guidance
    from streaming.factory import build_session, make_scheduler
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler

    sampler = pick_sampler("ddim", None, enc_loaded)
    audio = speechlike(2.4, seed=5)
    with make_scheduler(enc_loaded, "torch", latency_budget_ms=1e7) as sched:
        session = build_session(enc_loaded, sampler, Guidance(), StreamConfig(), scheduler=sched)
        sink = []
        assert session.run_async(sink.extend)

        def feed(x):
            for i in range(0, len(x), 320):
                session.feed(x[i:i + 320])
            _drain(session)
            return len(sink)

        n1 = feed(audio[:16000])
        sched.latency_budget_s = -1.0
        n2 = feed(audio[16000:24000])
        sched.latency_budget_s = 1e4
        feed(audio[24000:32000])
        session.finish()
        stats = sched.stats()

        broken = build_session(enc_loaded, sampler, Guidance(), StreamConfig(seed=1), scheduler=sched)
        assert broken.run_async(lambda frames: None)

        def bad_window(*args):
            raise ValueError("bad window")
        broken._window_inputs = bad_window
        with pytest.raises(ValueError, match="bad window"):
            for i in range(0, 32000, 320):
                broken.feed(audio[i:i + 320])
                time.sleep(0.002)
    assert all(f.shed is None for f in sink[:n1]) and all(f.shed is None for f in sink[n2 + 2:])
    assert sink[n1:n2] and all(f.shed == "dropped" for f in sink[n1:n2])
    assert [f.index for f in sink] == list(range(len(sink)))
    assert stats["shed"]["dropped"] == session.shed_steps["dropped"] > 0


def test_regen_with_the_streaming_encoder_alone_and_on_the_scheduler(enc_loaded):
    """--regen-ms on the streaming encoder: a window asks the encoder for its regenerated frame
    too (final features of an already-emitted frame), and asynchronous steps on a scheduler give
    what the session gives alone."""
    from diffposetalk.model import Guidance
    from streaming.factory import build_session, make_scheduler
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler

    sampler = pick_sampler("ddim", None, enc_loaded)
    audio = speechlike(1.9, seed=31)
    config = StreamConfig(40, 80, regen_ms=40, seed=0)
    alone = build_session(enc_loaded, sampler, Guidance(), config)
    asked = []
    frames_of = alone.audio.frames
    alone.audio.frames = lambda a, b: asked.append((a, b)) or frames_of(a, b)
    want = _frames(alone, audio)
    # step k (k >= 1) emits frame k and needs frames k-1 (regenerated) .. k+2 (lookahead)
    assert asked[:4] == [(0, 3), (0, 4), (1, 5), (2, 6)]
    plain = _frames(build_session(enc_loaded, sampler, Guidance(), StreamConfig(40, 80, seed=0)), audio)
    assert plain.shape == want.shape and not np.allclose(plain, want)
    with make_scheduler(enc_loaded, "torch", gather_ms=5, shed=False) as sched:
        session = build_session(enc_loaded, sampler, Guidance(), config, scheduler=sched)
        sink = []
        assert session.run_async(sink.extend)
        for j in range(0, len(audio), 320):
            assert session.feed(audio[j:j + 320]) == []
        session.end()
        assert session.finish() == []
    assert [f.index for f in sink] == list(range(len(want)))
    np.testing.assert_allclose(np.stack([f.motion for f in sink]), want, atol=1e-5)


def test_catching_up_on_the_scheduler_with_the_streaming_encoder(enc_loaded):
    """A session fed far faster than its steps run (all its audio at once, as a server's
    overloaded sessions fall behind) catches up two frames a step through the scheduler, its
    encoder pushed chunks of one and two frames; every frame comes once, in order. The same session
    without catch-up runs a step per frame."""
    from diffposetalk.model import Guidance
    from streaming.factory import build_session, make_scheduler
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler

    sampler = pick_sampler("ddim", None, enc_loaded)
    audio = speechlike(2.4, seed=33)
    n = len(audio) // FRAME_SAMPLES
    out = {}
    for catch_up in (False, True):
        config = StreamConfig(40, 80, regen_ms=40, catch_up=catch_up)
        steps = []
        with make_scheduler(enc_loaded, "torch", gather_ms=5, shed=False) as sched:
            session = build_session(enc_loaded, sampler, Guidance(), config, scheduler=sched, on_step=steps.append)
            pushed = []
            push_of = session.audio.begin
            session.audio.begin = lambda a, pushed=pushed, push_of=push_of: pushed.append(len(a)) or push_of(a)
            sink = []
            assert session.run_async(sink.extend)
            for j in range(0, len(audio), 320):
                session.feed(audio[j:j + 320])
            session.end()
            session.finish()
        assert [f.index for f in sink] == list(range(n))
        out[catch_up] = (steps, pushed)
    plain_steps, plain_pushed = out[False]
    steps, pushed = out[True]
    assert len(plain_steps) == n and set(plain_pushed[1:]) == {640}
    assert max(s.n_frames for s in steps) == 2 and len(steps) < 0.75 * n  # mostly two frames a step
    assert set(pushed[1:]) <= {640, 1280} and pushed.count(1280) == sum(s.n_frames == 2 for s in steps)


def test_a_catching_up_session_has_its_chunk_shapes_ready_before_its_first_step(enc_loaded):
    """ONNX Runtime makes one graph per chunk length: a session that may catch up prepares the
    two-frame chunk's at start-up (its silence features), not at a live step."""
    pytest.importorskip("onnxruntime")
    from diffposetalk.model import Guidance
    from streaming.factory import build_session
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler

    sampler = pick_sampler("ddim", None, enc_loaded)
    session = build_session(enc_loaded, sampler, Guidance(), StreamConfig(40, 80, regen_ms=40, catch_up=True),
                            backend="onnxruntime")
    assert session.audio.chunks == (3 * FRAME_SAMPLES, FRAME_SAMPLES, 2 * FRAME_SAMPLES)
    ready = set(session.audio.networks._stream)  # (the networks are shared with other sessions of the model)
    assert {(640, True), (1280, True), (1920, True)} <= ready
    steps = []
    session.on_step = steps.append
    audio = speechlike(1.2, seed=34)
    for j in range(0, len(audio), 2 * FRAME_SAMPLES):  # 80 ms at a time: it catches up every step
        session.feed(audio[j:j + 2 * FRAME_SAMPLES])
    assert max(s.n_frames for s in steps) == 2
    assert set(session.audio.networks._stream) == ready  # no graph made at a live step


def test_the_server_lets_its_sessions_catch_up_on_cpu_runtimes_only(enc_loaded):
    from diffposetalk.sampler import DDIMSampler
    from server.engine import Engine
    from streaming.session import StreamConfig

    def config(backend, window=(40, 80, 1600, 40)):
        return Engine(loaded=enc_loaded, sampler=DDIMSampler(1), config=StreamConfig(*window),
                      backend=backend).session_config()

    assert config("onnxruntime").catch_up and config("torch").catch_up
    assert not config("tensorrt").catch_up
    assert not config("torch", (80, 80, 1600, 0)).catch_up  # nothing to catch up with: no regen
