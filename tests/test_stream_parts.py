"""Streaming building blocks without a model: window arithmetic, ring buffer, conditioning,
running normalisation, PCM conversion, style crossfade, procedural eyes, metrics."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from diffposetalk.audio_io import StreamResampler, pcm_to_float
from diffposetalk.errors import UserError
from diffposetalk.units import FRAME_SAMPLES
from streaming.conditioning import AudioConditioner, RunningNormalizer
from streaming.eyes import ProceduralEyes
from streaming.metrics import replay_latency, seam_smoothness
from streaming.ring import RingBuffer
from streaming.style import StyleFader, smoothstep
from streaming.windowing import WindowSpec, frames_in, parse_windows

# --- windowing ------------------------------------------------------------------------------------

def test_window_arithmetic():
    spec = WindowSpec.from_ms(80, 120, 800)
    assert (spec.hop, spec.lookahead, spec.context) == (2, 3, 20)
    assert spec.new_frames == 5 and spec.window_frames == 25 and spec.window_samples == 25 * 640
    # step k emits frames [2k, 2k+2) and needs audio up to frame 2k+2+3
    assert spec.first_frame(4) == 8
    assert spec.audio_end(4) == (10 + 3) * FRAME_SAMPLES
    # every window has the same length; the first ones start before the stream (negative)
    for k in range(50):
        assert spec.audio_end(k) - spec.audio_start(k) == spec.window_samples
    assert spec.audio_start(0) < 0
    # consecutive windows advance by exactly one hop
    assert spec.audio_end(1) - spec.audio_end(0) == 2 * FRAME_SAMPLES
    assert spec.steps_for(7) == 4 and spec.steps_for(8) == 4
    assert frames_in(16000) == 25 and frames_in(16000 + 639) == 25


@pytest.mark.parametrize("args", [(60, 80, 800), (80, 30, 800), (80, 80, 810), (0, 80, 800), (80, -40, 800)])
def test_window_rejects_bad_knobs(args):
    with pytest.raises(UserError):
        WindowSpec.from_ms(*args)


def test_parse_windows():
    """The one parser behind stream-bench --grid, bench --windows and distill --configs."""
    assert parse_windows("80/80/1600, 160/0/800", "--grid") == [(80, 80, 1600), (160, 0, 800)]
    assert parse_windows("80/80,160/80/400", "--windows", default_context_ms=1200) == [(80, 80, 1200),
                                                                                         (160, 80, 400)]
    assert parse_windows("80/40", "--configs", 0, pairs_only=True) == [(80, 40, 0)]
    for text, kw, message in [("80/80", {}, "--grid: '80/80' is not HOP/LOOKAHEAD/CONTEXT"),
                              ("80/x", {"default_context_ms": 800}, "--grid: '80/x'"),
                              ("80/80/800", {"default_context_ms": 0, "pairs_only": True}, "HOP/LOOKAHEAD in"),
                              ("50/80/800", {}, "multiple of 40"), (" , ", {}, "at least one window")]:
        with pytest.raises(UserError, match=message):
            parse_windows(text, "--grid", **kw)


def test_window_must_fit_model():
    WindowSpec.from_ms(2000, 2000, 0).check_model(100)
    with pytest.raises(UserError, match="exceeds the model's window"):
        WindowSpec.from_ms(2000, 2040, 0).check_model(100)


# --- ring buffer ----------------------------------------------------------------------------------

def test_ring_wraps_and_pads():
    ring = RingBuffer(10)
    data = np.arange(1, 26, dtype=np.float32)
    for i in range(0, 25, 3):
        ring.write(data[i:i + 3], arrival=float(i))
    assert ring.written == 25 and ring.oldest == 15
    out, lo, hi = ring.read(15, 25)
    np.testing.assert_array_equal(out, data[15:25])
    # beyond the end: zeros, mask says where real audio is
    out, lo, hi = ring.read(20, 30)
    np.testing.assert_array_equal(out[:5], data[20:25])
    assert (lo, hi) == (0, 5) and not out[5:].any()
    with pytest.raises(ValueError, match="overwritten"):
        ring.read(10, 20)
    # before the stream start
    fresh = RingBuffer(8)
    fresh.write(np.ones(4, np.float32))
    out, lo, hi = fresh.read(-4, 4)
    assert (lo, hi) == (4, 8) and out[:4].sum() == 0 and out[4:].sum() == 4


def test_ring_arrival_times_are_bounded():
    ring = RingBuffer(100)
    for i in range(1000):
        ring.write(np.zeros(10, np.float32), arrival=float(i))
        ring.forget_arrivals(i * 10 - 50)
    assert len(ring._arrivals) <= 7
    assert ring.arrival_of(10_000) == 999.0 and ring.arrival_of(9_991) == 999.0 and ring.arrival_of(9_990) == 998.0


# --- conditioning ---------------------------------------------------------------------------------

def test_nonfinite_replaced_and_logged_once(caplog):
    cond = AudioConditioner()
    block = np.ones(100, np.float32) * 0.1
    block[[3, 50]] = [np.nan, np.inf]
    with caplog.at_level(logging.WARNING, logger="dpt_live.stream"):
        out1 = cond(block)
        out2 = cond(block)
    assert np.all(np.isfinite(out1)) and out1[3] == 0 and out1[50] == 0 and np.array_equal(out1, out2)
    assert cond.nonfinite == 4
    assert sum("NaN/inf" in r.message for r in caplog.records) == 1


def test_clipping_noticed(caplog):
    cond = AudioConditioner()
    square = np.sign(np.sin(np.arange(1000) / 5)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="dpt_live.stream"):
        cond(square)
        cond(square)
        cond(square * 0.5)
    assert cond.clipped_blocks == 2
    assert sum("clipping" in r.message for r in caplog.records) == 1


def test_running_normaliser_removes_dc_and_scale():
    rng = np.random.default_rng(0)
    speech = rng.normal(scale=0.05, size=16000 * 4).astype(np.float32)
    a, b = RunningNormalizer(), RunningNormalizer()
    for i in range(0, len(speech), 1280):
        a.update(speech[i:i + 1280])
        b.update(3 * speech[i:i + 1280] + 0.4)  # louder, with a DC offset
    w = speech[-4000:]
    np.testing.assert_allclose(a.normalise(w), b.normalise(3 * w + 0.4), atol=2e-3)
    assert abs(a.normalise(w).std() - 1) < 0.05


def test_running_normaliser_floor_and_padding():
    n = RunningNormalizer(floor=3e-3)
    n.update(np.zeros(16000, np.float32))
    assert n.std == 3e-3  # silence is not amplified without bound
    hiss = np.full(100, 1e-4, np.float32)
    assert np.abs(n.normalise(hiss)).max() < 0.05
    out = n.normalise(np.ones(10, np.float32), lo=2, hi=8)
    assert not out[:2].any() and not out[8:].any() and out[2:8].all()


def test_running_normaliser_first_hop_uses_real_statistics():
    n = RunningNormalizer(tau_s=8.0)
    n.update(np.full(1280, 0.3, np.float32) + np.tile([0.1, -0.1], 640).astype(np.float32))
    assert n.mean == pytest.approx(0.3, abs=1e-6) and n.std == pytest.approx(0.1, rel=1e-3)


# --- PCM conversion and resampling ----------------------------------------------------------------

def test_pcm_int16_stereo_bytes():
    pcm = np.array([[16384, -16384], [32767, 0]], np.int16)
    out = pcm_to_float(pcm.tobytes(), "int16", 2)
    np.testing.assert_allclose(out, [[0.5, -0.5], [32767 / 32768, 0]])
    with pytest.raises(UserError, match="channel"):
        pcm_to_float(np.zeros(3, np.int16).tobytes(), "int16", 2)
    with pytest.raises(UserError, match="unsupported"):
        pcm_to_float(b"\x00" * 8, "float64", 1)


def test_stream_resampler_downmixes_and_is_block_independent():
    rate = 44100
    t = np.arange(rate) / rate
    stereo = np.stack([np.sin(2 * np.pi * 200 * t), np.sin(2 * np.pi * 200 * t + np.pi)], 1).astype(np.float32)
    r = StreamResampler(rate)
    mono = np.concatenate([r(stereo[i:i + 441]) for i in range(0, rate, 441)] + [r.flush()])
    assert len(mono) == 16000 and np.abs(mono).max() < 1e-3  # antiphase channels cancel
    left = stereo.copy()
    left[:, 1] = left[:, 0]
    r1, r2 = StreamResampler(rate), StreamResampler(rate)
    a = np.concatenate([r1(left[i:i + 1000]) for i in range(0, rate, 1000)] + [r1.flush()])
    b = np.concatenate([r2(left[i:i + 777]) for i in range(0, rate, 777)] + [r2.flush()])
    np.testing.assert_array_equal(a, b)


# --- style crossfade ------------------------------------------------------------------------------

def test_style_crossfade_is_gradual_and_eased():
    a, b, null = np.zeros(4, np.float32), np.ones(4, np.float32), np.full(4, -1, np.float32)
    fader = StyleFader(a, null, fade_frames=12.5)
    np.testing.assert_array_equal(fader.at(100), a)
    fader.set(b, at_frame=50)
    w = np.array([fader.at(f)[0] for f in range(50, 64)])
    assert w[0] == 0 and w[-1] == 1 and np.all(np.diff(w) >= 0)
    assert np.abs(np.diff(w)).max() < 1.6 / 12.5  # no pop: at most ~1.5x the linear rate
    assert np.diff(w)[0] < 0.05 and np.diff(w)[-1] < 0.05  # eased in and out
    # switching mid-fade starts from where the fade is, not from either end
    fader.set(a, at_frame=56)
    assert fader.at(56)[0] == pytest.approx(smoothstep(6 / 12.5))


def test_style_crossfade_to_and_from_null():
    null = np.full(3, 2.0, np.float32)
    fader = StyleFader(None, null, fade_frames=10)
    assert fader.at(0) is None
    fader.set(np.zeros(3, np.float32), at_frame=0)
    assert fader.at(5)[0] == pytest.approx(1.0)  # half way from the null vector
    fader.set(None, at_frame=20)
    assert fader.at(25)[0] == pytest.approx(1.0) and fader.at(30) is None


# --- eyes -----------------------------------------------------------------------------------------

def test_procedural_eyes():
    eyes = ProceduralEyes(seed=3)
    e = np.stack([eyes.next() for _ in range(25 * 120)])
    assert e.shape == (3000, 4)
    closed = e[:, 0] > 0
    starts = np.flatnonzero(closed[1:] & ~closed[:-1]) + 1
    gaps = np.diff(starts) / 25
    assert len(starts) >= 18 and gaps.min() >= 2.0 and gaps.max() <= 6.3
    lengths = [np.argmin(closed[s:]) for s in starts]
    assert max(lengths) <= 4  # ~150 ms = 3-4 frames
    assert e[:, 0].max() > 0.75 and np.array_equal(e[:, 0], e[:, 1])
    assert np.abs(e[:, 2:]).max() <= 0.05 and np.abs(np.diff(e[:, 2])).max() > 0  # saccades happen
    again = ProceduralEyes(seed=3)
    np.testing.assert_array_equal(e[:50], np.stack([again.next() for _ in range(50)]))


# --- metrics --------------------------------------------------------------------------------------

def test_seam_smoothness_counts_seams():
    m = np.zeros((9, 2))
    m[4:, 0] = 1  # one jump into frame 4: a seam for hop 2 and hop 4
    s = seam_smoothness(m, 2)
    assert s["seam"] == pytest.approx(1 / 4) and s["inside"] == 0
    assert seam_smoothness(np.cumsum(np.ones((9, 1)), 0), 3)["ratio"] == pytest.approx(1.0)


def test_replay_latency():
    spec = WindowSpec.from_ms(80, 80, 400)
    lat = replay_latency([0.01] * 10, spec, n_frames=20, block_samples=320)
    # frame 0 arrives at 40 ms, step 0 needs audio to 160 ms, computes 10 ms: 130 ms; frame 1: 90 ms
    assert lat[0] == pytest.approx(0.13) and lat[1] == pytest.approx(0.09)
    slow = replay_latency([0.2] * 10, spec, n_frames=20)
    assert slow[-1] > slow[0]  # compute slower than the hop: latency grows (queueing)


def test_live_resampler_holds_back_little_and_is_block_independent():
    """Live sources resample with ~3 ms of filter delay (soxr's streaming LQ held back ~20 ms, a
    whole 20 ms upstream block, which every step waited for)."""
    rate = 44100
    held = {}
    for quality in ("LQ", "live"):
        r = StreamResampler(rate, quality=quality)
        out = sum(len(r(np.zeros(882, np.float32))) for _ in range(100))
        held[quality] = 100 * 882 * 16000 / rate - out
    assert abs(held["live"]) <= 2 and held["LQ"] >= 256  # samples at 16 kHz: none vs a 20 ms block
    x = np.random.default_rng(0).standard_normal(rate).astype(np.float32)
    r1, r2 = StreamResampler(rate, quality="live"), StreamResampler(rate, quality="live")
    a = np.concatenate([r1(x[i:i + 882]) for i in range(0, rate, 882)] + [r1.flush()])
    b = np.concatenate([r2(x[i:i + 613]) for i in range(0, rate, 613)] + [r2.flush()])
    np.testing.assert_array_equal(a, b)
    assert abs(len(a) - 16000) <= 2
    # an impulse comes out whole, its content at most ~3 ms late (the filter's half-length)
    imp = np.zeros(rate, np.float32)
    imp[rate // 2] = 1
    r = StreamResampler(rate, quality="live")
    y = np.concatenate([r(imp[i:i + 882]) for i in range(0, rate, 882)] + [r.flush()])
    lag = int(np.argmax(np.abs(y))) - 8000
    assert 0 <= lag <= 64, lag
    assert abs(y.sum() * rate / 16000 - 1) < 0.02  # its energy kept (DC gain 1)


def test_live_resampler_decimates_integer_factors_with_a_cheap_fir():
    """48 kHz (a browser page's upstream) goes through the polyphase FIR decimator: nothing held
    back, block-independent, the direct convolution's values, ~2 ms of delay, speech band kept and
    what would alias into it removed."""
    rate = 48000
    r = StreamResampler(rate, quality="live")
    assert r._fir is not None and r._src is None
    assert sum(len(r(np.zeros(960, np.float32))) for _ in range(50)) == 50 * 320  # nothing held back
    x = np.random.default_rng(1).standard_normal(rate).astype(np.float32)
    r1, r2 = StreamResampler(rate, quality="live"), StreamResampler(rate, quality="live")
    a = np.concatenate([r1(x[i:i + 960]) for i in range(0, rate, 960)] + [r1.flush()])
    b = np.concatenate([r2(x[i:i + 701]) for i in range(0, rate, 701)] + [r2.flush()])
    np.testing.assert_array_equal(a, b)
    assert len(a) == 16000
    taps = r1._fir.taps
    padded = np.concatenate([np.zeros(len(taps) - 1, np.float32), x])
    direct = np.array([padded[3 * j:3 * j + len(taps)] @ taps for j in range(0, 16000, 97)])
    np.testing.assert_allclose(a[::97], direct, atol=1e-5)
    imp = np.zeros(rate, np.float32)
    imp[rate // 2] = 1
    r3 = StreamResampler(rate, quality="live")
    y = np.concatenate([r3(imp[i:i + 960]) for i in range(0, rate, 960)] + [r3.flush()])
    assert 0 <= int(np.argmax(np.abs(y))) - 8000 <= 48 and abs(y.sum() * 3 - 1) < 0.01

    def tone_gain(hz):
        t = np.arange(rate) / rate
        out = StreamResampler(rate, quality="live")(np.sin(2 * np.pi * hz * t).astype(np.float32))
        return float(np.sqrt(np.mean(out[2000:] ** 2)) / np.sqrt(0.5))
    assert abs(tone_gain(3000) - 1) < 0.01 and abs(tone_gain(6500) - 1) < 0.01
    assert tone_gain(9000) < 10 ** (-60 / 20) and tone_gain(15000) < 10 ** (-60 / 20)


# --- decoding -------------------------------------------------------------------------------------

@pytest.mark.parametrize("head_pose", [True, False])
def test_coef_decoder_equals_motion_to_coef(head_pose):
    """The streaming decoder (numpy) gives exactly the model's motion_to_coef (torch)."""
    import torch

    from diffposetalk.model import motion_to_coef
    from streaming.motion import CoefDecoder

    rng = np.random.default_rng(0)
    stats = {k: torch.from_numpy(rng.normal(0, s, n).astype(np.float32)) for k, s, n in
             [("exp_mean", 0.3, 50), ("pose_mean", 0.05, 6)]}
    stats |= {k: torch.from_numpy(rng.uniform(0.1, 2, n).astype(np.float32)) for k, n in [("exp_std", 50), ("pose_std", 6)]}
    motion = rng.normal(0, 1, (3, 54 if head_pose else 51)).astype(np.float32)
    exp, pose = CoefDecoder(stats, head_pose)(motion)
    ref = motion_to_coef(torch.from_numpy(motion), stats, head_pose)
    assert exp.dtype == np.float32 and pose.dtype == np.float32
    np.testing.assert_array_equal(exp, ref["exp"].numpy())
    np.testing.assert_array_equal(pose, ref["pose"].numpy())
