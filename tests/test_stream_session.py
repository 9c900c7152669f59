"""The streaming session with tiny models: frame accounting, continuation, fixed encoder shape,
seams, determinism, style switching, bad audio, and a long stream (drift, memory, slowdown)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

from diffposetalk.model import Guidance
from diffposetalk.model_dir import load_model_dir
from diffposetalk.sampler import DDIMSampler, DDPMSampler
from diffposetalk.synth_audio import speechlike, speechlike_blocks
from diffposetalk.units import FRAME_SAMPLES
from engines.networks import TorchNetworks
from streaming.factory import open_session
from streaming.metrics import seam_smoothness
from streaming.motion import CoefDecoder, NetworkAudioFeatures, SamplingMotionEngine
from streaming.runner import stream_array
from streaming.session import StreamConfig, StreamSession


@pytest.fixture(scope="module")
def audio():
    return speechlike(3.3, seed=1)


class SpyMotion:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def sample(self, *args):
        out = self.inner.sample(*args)
        self.calls.append([np.array(a) if a is not None else None for a in args[:5]] + [args[5], out])
        return out


class SpyAudio:
    def __init__(self, inner):
        self.inner, self.inputs = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def features(self, audio):
        self.inputs.append(np.array(audio))
        return self.inner.features(audio)


def spy_session(loaded, config, style=None, sampler=None):
    cfg = config.spec()
    shape = torch.zeros(loaded.config.shape_dim)
    audio = SpyAudio(NetworkAudioFeatures(TorchNetworks(loaded.model), cfg.window_samples))
    motion = SpyMotion(SamplingMotionEngine(loaded.model, sampler or DDIMSampler(1), Guidance(), shape, config.seed))
    session = StreamSession(audio, motion, CoefDecoder(loaded.stats, loaded.config.head_pose), config, style)
    return session, audio, motion


def run(session, audio, block=320):
    return stream_array(session, audio, block)


def test_frames_indices_and_times(loaded, audio):
    session = open_session(loaded, DDIMSampler(1), Guidance(), StreamConfig(80, 80, 400))
    frames = run(session, audio)
    assert len(frames) == int(3.3 * 25) == 82
    assert [f.index for f in frames] == list(range(82))
    np.testing.assert_allclose([f.audio_time for f in frames], (np.arange(82) + 0.5) / 25)
    emit = np.array([f.emit_time for f in frames])
    assert np.all(np.diff(emit) >= 0) and np.all(emit >= np.array([f.arrival_time for f in frames]))
    assert frames[0].exp.shape == (50,) and frames[0].pose.shape == (6,) and frames[0].eyes is None
    assert all(np.all(np.isfinite(f.exp)) and np.all(np.isfinite(f.pose)) for f in frames)


def test_continuation_and_window_layout(loaded, audio):
    config = StreamConfig(120, 80, 400)  # hop 3 frames, lookahead 2: prev (10) spans several steps
    session, spy_audio, spy_motion = spy_session(loaded, config)
    frames = run(session, audio)
    L, n_prev = loaded.config.n_motions, loaded.config.n_prev_motions
    # the audio encoder always sees one fixed shape
    assert {a.shape for a in spy_audio.inputs} == {(config.spec().window_samples,)}
    emitted = np.stack([f.motion for f in frames])
    # each window's "previous" frames are the last n_prev frames already emitted (or the model's
    # learned start condition before there are enough), with the audio features they were made from
    history_m = list(session.motion.start_motion)
    history_a = list(session.motion.start_audio)
    pending = np.zeros((0, emitted.shape[1]))
    for k, (feat, ind, prev_m, prev_a, _style, step, out) in enumerate(spy_motion.calls):
        assert step == k
        np.testing.assert_array_equal(prev_m, np.stack(history_m[-n_prev:]))
        np.testing.assert_array_equal(prev_a, np.stack(history_a[-n_prev:]))
        n_emit = min(3, len(frames) - 3 * k)
        # seam blend: the first frames fade from the previous step's lookahead prediction of them
        expected = out[:n_emit].copy()
        for i in range(min(len(pending), n_emit)):
            w = (i + 1) / (len(pending) + 1)
            expected[i] = w * out[i] + (1 - w) * pending[i]
        np.testing.assert_allclose(emitted[3 * k:3 * k + n_emit], expected, rtol=1e-6, atol=1e-6)
        pending = out[n_emit:int(ind.sum())]
        history_m += list(emitted[3 * k:3 * k + n_emit])
        history_a += list(feat[:n_emit])
        # real frames (hop + lookahead) then padding with indicator 0 and silence features
        n_real = int(ind.sum())
        assert np.all(ind[:n_real] == 1) and np.all(ind[n_real:] == 0)
        assert n_real == 5 or k >= len(spy_motion.calls) - 2  # fewer only at the end of the stream
        np.testing.assert_array_equal(feat[n_real:], np.broadcast_to(session.silence, (L - n_real, feat.shape[1])))
    # lookahead frames are regenerated: step k's lookahead and step k+1's emitted frames differ
    assert not np.allclose(spy_motion.calls[3][-1][3:5], spy_motion.calls[4][-1][0:2])


def test_without_seam_blend_frames_are_emitted_as_sampled(loaded, audio):
    session, _, spy = spy_session(loaded, StreamConfig(120, 80, 400, seam_blend=False))
    emitted = np.stack([f.motion for f in run(session, audio[:16000])])
    np.testing.assert_array_equal(emitted, np.concatenate([c[-1][:3] for c in spy.calls])[:len(emitted)])


def test_seams_like_inside(loaded):
    audio = speechlike(6, seed=2)
    ratios = {}
    for blend in (True, False):
        session = open_session(loaded, DDIMSampler(2), Guidance(), StreamConfig(160, 80, 800, seam_blend=blend))
        ratios[blend] = seam_smoothness(np.stack([f.motion for f in run(session, audio)]), 4)["ratio"]
    assert 0.6 < ratios[True] < 1.3 and ratios[True] <= ratios[False] + 0.05, ratios


def test_deterministic_for_seed_and_audio(loaded, audio):
    def motion(seed, block, sampler):
        session = open_session(loaded, sampler, Guidance(), StreamConfig(160, 80, 400, eyes=True, seed=seed))
        fr = run(session, audio[:16000], block)
        return np.stack([f.motion for f in fr]), np.stack([f.eyes for f in fr])

    # the result does not depend on how the audio was cut into blocks
    a, ea = motion(5, 320, DDPMSampler())
    b, eb = motion(5, 1111, DDPMSampler())
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ea, eb)
    c, _ = motion(6, 320, DDPMSampler())
    assert not np.allclose(a, c)


def test_style_switch_crossfades(loaded, audio):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, loaded.config.d_style)).astype(np.float32)
    session, _, spy = spy_session(loaded, StreamConfig(80, 80, 400, style_fade_s=0.5), style=a)
    frames = []
    for i in range(0, len(audio), 320):
        if i == 16000:
            session.set_style(b)
            switch = session.emitted
        frames += session.feed(audio[i:i + 320])
    frames += session.finish()
    styles = np.stack([c[4] for c in spy.calls])
    first = np.array([c[5] * 2 for c in spy.calls])  # first frame of each step (hop 2)
    w = (styles - a) @ (b - a) / ((b - a) @ (b - a))  # position between a and b
    np.testing.assert_allclose(styles, a + w[:, None] * (b - a), atol=1e-5)  # on the line a -> b
    assert np.abs(w[first < switch]).max() < 1e-6 and np.abs(w[first >= switch + 13] - 1).max() < 1e-6
    fading = w[(first >= switch) & (first < switch + 13)]
    assert len(fading) >= 6 and np.all(np.diff(fading) > 0) and np.diff(w).max() < 0.3


def test_bad_audio(loaded, caplog):
    rng = np.random.default_rng(0)
    speech = speechlike(2.0, seed=3)
    nan = speech.copy()
    nan[5000:5100] = np.nan
    nan[9000] = np.inf
    cases = {"nan": nan, "silence": np.zeros(32000, np.float32),
             "clipping": np.clip(speech * 50, -1, 1), "dc": speech + 0.5,
             "noise": rng.normal(scale=1e-4, size=32000).astype(np.float32)}
    out = {}
    with caplog.at_level(logging.WARNING, logger="dpt_live.stream"):
        for name, x in cases.items():
            session = open_session(loaded, DDIMSampler(1), Guidance(), StreamConfig(80, 80, 400))
            frames = run(session, x)
            out[name] = np.stack([f.motion for f in frames])
            assert len(frames) == 50, name
            assert np.all(np.isfinite(out[name])), name
            if name == "nan":
                assert session.conditioner.nonfinite == 101
            if name == "clipping":
                assert session.conditioner.clipped_blocks > 0
    assert sum("NaN/inf" in r.message for r in caplog.records) == 1
    assert any("clipping" in r.message for r in caplog.records)
    clean = np.stack([f.motion for f in run(
        open_session(loaded, DDIMSampler(1), Guidance(), StreamConfig(80, 80, 400)), speech)])
    # a DC offset is removed by the running mean: the motion barely changes
    assert np.abs(out["dc"] - clean).max() < 0.05 * np.abs(clean).max()


def test_short_streams(loaded):
    session = open_session(loaded, DDIMSampler(1), Guidance(), StreamConfig(80, 80, 400))
    assert session.feed(np.zeros(100, np.float32)) == [] and session.finish() == []
    session = open_session(loaded, DDIMSampler(1), Guidance(), StreamConfig(80, 80, 400))
    frames = session.feed(speechlike(0.5)) + session.finish()
    assert len(frames) == 12
    with pytest.raises(RuntimeError):
        session.feed(np.zeros(10, np.float32))


def test_long_stream_no_drift_or_memory_growth(tmp_path):
    """Ten minutes of audio through a micro model: frame count exact, memory flat. (Slowdown is a
    timing question: `dpt-live stream-bench --long 3600` measures it; no timed assertions here.)"""
    from conftest import make_tiny_model_dir

    from diffposetalk.config import HUBERT_TINY

    hubert = dict(HUBERT_TINY, hidden_size=16, num_hidden_layers=1, conv_dim=[8] * 7, intermediate_size=32,
                  num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
    micro = load_model_dir(make_tiny_model_dir(tmp_path / "micro", n_motions=20, n_prev_motions=4,
                                               feature_dim=16, n_heads=2, n_layers=1, audio_hidden=16,
                                               hubert=hubert))
    seconds = 600
    session = open_session(micro, DDIMSampler(1), Guidance(), StreamConfig(480, 80, 160), clock=time.thread_time)
    frames, rss = 0, []
    last_index = -1
    for i, block in enumerate(speechlike_blocks(seconds, block=8000, seed=4)):
        fr = session.feed(block)
        if fr:
            assert fr[0].index == last_index + 1
            last_index = fr[-1].index
        frames += len(fr)
        if i % 120 == 0:
            rss.append(_rss_mb())
    frames += len(session.finish())
    assert abs(frames - seconds * 25) <= 1
    assert session.ring.written == seconds * 16000
    assert len(session.ring._arrivals) < 20
    assert rss[-1] - rss[1] < 15, rss  # MB, after warm-up


def _rss_mb() -> float:
    from bench.common import rss_mb

    return rss_mb()


def test_style_cache(loaded, tmp_path):
    from streaming.style import StyleCache

    rng = np.random.default_rng(0)
    np.save(tmp_path / "s.npy", rng.normal(size=loaded.config.d_style).astype(np.float32))
    np.savez(tmp_path / "clip.npz", exp=rng.normal(size=(120, 50)).astype(np.float32),
             pose=rng.normal(scale=0.1, size=(120, 6)).astype(np.float32))
    cache = StyleCache(loaded)
    np.testing.assert_array_equal(cache.get("calm"), loaded.styles["calm"])
    assert cache.get(str(tmp_path / "s.npy")).shape == (loaded.config.d_style,)
    clip = cache.get(str(tmp_path / "clip.npz"))
    assert clip.shape == (loaded.config.d_style,) and np.all(np.isfinite(clip))
    assert cache.get(str(tmp_path / "clip.npz")) is clip  # computed once


def test_choose_style(loaded, tmp_path):
    """Which style a run uses, as every command asks it (streaming.style.choose_style)."""
    import dataclasses

    from diffposetalk.errors import UserError
    from streaming.style import choose_style

    rng = np.random.default_rng(1)
    vec = rng.normal(size=loaded.config.d_style).astype(np.float32)
    np.save(tmp_path / "s.npy", vec)
    np.savez(tmp_path / "saved.npz", style=vec)  # a vector in an .npz, as LoadedModel.style reads it
    np.savez(tmp_path / "clip.npz", exp=rng.normal(size=(120, 50)).astype(np.float32),
             pose=rng.normal(scale=0.1, size=(120, 6)).astype(np.float32))
    calm = choose_style(loaded, "calm")
    assert (calm.name, calm.label) == ("calm", "calm")
    np.testing.assert_array_equal(calm.vector, loaded.styles["calm"])
    npy = choose_style(loaded, str(tmp_path / "s.npy"))
    assert npy.name == "s.npy" and np.array_equal(npy.vector, vec) and np.array_equal(npy.tensor.numpy(), vec)
    assert np.array_equal(choose_style(loaded, str(tmp_path / "saved.npz")).vector, vec)
    clip = choose_style(loaded, str(tmp_path / "clip.npz"))
    assert clip.name == "clip.npz" and clip.vector.shape == (loaded.config.d_style,)
    # unset: 'default', else the null style; benchmarks: any preset, then a seeded random vector
    null = choose_style(loaded, None)
    assert null.vector is None and null.name is None and null.tensor is None
    with_default = dataclasses.replace(loaded, styles={**loaded.styles, "default": vec})
    assert choose_style(with_default, None).name == "default"
    assert choose_style(loaded, None, any_preset=True).label == "preset calm"
    bare = dataclasses.replace(loaded, styles={})
    a, b = (choose_style(bare, None, any_preset=True, random_seed=3) for _ in range(2))
    assert a.label == "random vector" and np.array_equal(a.vector, b.vector)
    assert choose_style(bare, None, any_preset=True).vector is None
    styleless = dataclasses.replace(loaded, config=dataclasses.replace(loaded.config, use_style=False))
    assert choose_style(styleless, None, any_preset=True, random_seed=0).vector is None
    with pytest.raises(UserError, match="takes no style input"):
        choose_style(styleless, "calm")


def test_window_samples_must_match_engine(loaded):
    config = StreamConfig(80, 80, 400)
    wrong = NetworkAudioFeatures(TorchNetworks(loaded.model), 640 * 10)
    motion = SamplingMotionEngine(loaded.model, DDIMSampler(1), Guidance(), torch.zeros(100))
    with pytest.raises(ValueError, match="fixed to"):
        StreamSession(wrong, motion, CoefDecoder(loaded.stats, True), config)
    assert config.spec().window_samples == 14 * FRAME_SAMPLES


def test_regenerated_frames_keep_the_window_layout(loaded, audio):
    """--regen-ms: a 40 ms hop whose window starts one emitted frame earlier. Each window (after
    the first) has regen + hop + lookahead real frames, continues from the frames before the
    regenerated one, and only the hop's frame is emitted (blended with the previous lookahead)."""
    config = StreamConfig(40, 80, 400, regen_ms=40)
    session, _, spy_motion = spy_session(loaded, config)
    frames = run(session, audio)
    assert [f.index for f in frames] == list(range(82))
    n_prev = loaded.config.n_prev_motions
    emitted = np.stack([f.motion for f in frames])
    history_m = list(session.motion.start_motion)
    history_a = list(session.motion.start_audio)
    pending = np.zeros((0, emitted.shape[1]))
    for k, (feat, ind, prev_m, prev_a, _style, _step, out) in enumerate(spy_motion.calls):
        r = min(1, k)  # nothing to regenerate before the first frame
        end = len(history_m) - r
        np.testing.assert_array_equal(prev_m, np.stack(history_m[end - n_prev:end]))
        np.testing.assert_array_equal(prev_a, np.stack(history_a[end - n_prev:end]))
        n_real = int(ind.sum())
        assert n_real == r + 3 or k >= len(spy_motion.calls) - 2
        w = 1 / (len(pending) + 1)
        expected = out[r] if not len(pending) else w * out[r] + (1 - w) * pending[0]
        np.testing.assert_allclose(emitted[k], expected, rtol=1e-6, atol=1e-6)
        pending = out[r + 1:n_real]
        history_m.append(emitted[k])
        history_a.append(feat[r])
    # the layout differs from the plain 40 ms hop's (its windows hold hop + lookahead real frames only)
    plain, _, spy_plain = spy_session(loaded, StreamConfig(40, 80, 400))
    run(plain, audio)
    assert int(spy_plain.calls[5][1].sum()) == 3 and int(spy_motion.calls[5][1].sum()) == 4


def test_regen_is_checked_against_the_window_and_the_context(loaded):
    from diffposetalk.errors import UserError

    with pytest.raises(UserError, match="regen 80 ms needs at least as much left context"):
        StreamConfig(40, 80, 40, regen_ms=80).spec()
    with pytest.raises(UserError, match="multiple of 40"):
        StreamConfig(40, 80, 400, regen_ms=20).spec()
    with pytest.raises(UserError, match="regen \\+ hop \\+ lookahead = .* exceeds the model's window"):
        n = loaded.config.n_motions  # regen n - 2, hop 1, lookahead 2: one frame too many
        StreamConfig(40, 80, 40 * n, regen_ms=40 * (n - 2)).spec().check_model(n)


def test_a_session_behind_its_audio_catches_up_two_frames_a_step(loaded, audio):
    """StreamConfig.catch_up: a step that begins with the audio of a further frame already in
    emits it too, regenerating one frame less (the 80 ms hop's layout: one pass, two frames).
    Fed in 80 ms blocks the session is always one frame behind and catches up every step; fed in
    20 ms blocks it never is and gives what the session without catch-up gives."""
    config = StreamConfig(40, 80, 400, regen_ms=40, catch_up=True)
    session, _, spy = spy_session(loaded, config)
    frames = run(session, audio, block=1280)
    assert [f.index for f in frames] == list(range(82))
    n_prev = loaded.config.n_prev_motions
    emitted = np.stack([f.motion for f in frames])
    steps = [f.step for f in frames]
    sizes = [steps.count(k) for k in range(max(steps) + 1)]
    # the first step never catches up (its chunk holds the lookahead), the second has one frame
    # ready (its audio came in the same block as the first's); from then on two every step
    assert sizes[:2] == [1, 1] and set(sizes[2:-2]) == {2}, sizes
    history = list(session.motion.start_motion) + list(emitted)
    first = 2
    for k in range(2, len(sizes) - 2):
        ind, prev_m = spy.calls[k][1], spy.calls[k][2]
        assert int(ind.sum()) == 4  # two emitted + two lookahead, none regenerated
        end = n_prev + first  # the conditions: the frames just before the step's first (no regen)
        np.testing.assert_array_equal(prev_m, np.stack(history[end - n_prev:end]))
        first += sizes[k]
    slow = run(spy_session(loaded, config)[0], audio, block=320)
    plain = run(spy_session(loaded, StreamConfig(40, 80, 400, regen_ms=40))[0], audio, block=320)
    assert {f.step for f in slow} == set(range(82))  # never behind: one frame a step
    np.testing.assert_array_equal(np.stack([f.motion for f in slow]), np.stack([f.motion for f in plain]))
