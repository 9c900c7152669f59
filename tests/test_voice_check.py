"""voice-check: the VAD and jaw metrics on constructed signals with known answers, the command end to
end on real espeak-ng speech through the bundled models, and the recording conversion of
`voices fetch` on a local package layout. The download itself (apt-get / PyPI) needs the network
and is not tested here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from diffposetalk.units import FRAME_SAMPLES as FRAME  # the VAD frame is the motion frame
from diffposetalk.units import SAMPLE_RATE
from dpt_live.cli import main
from training import real_voices
from training.voice_check import (
    DEFINITIONS,
    VAD_DILATE,
    jaw_metrics,
    pad_silence,
    speech_frames,
    variants,
)

REPO = Path(__file__).resolve().parent.parent


def tone(frames: int, amplitude: float = 0.3, hz: float = 200.0) -> np.ndarray:
    t = np.arange(frames * FRAME) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def burst_clip() -> tuple[np.ndarray, int]:
    """40 frames of silence, a 25-frame tone burst, 40 frames of silence -> (audio, pad frames)."""
    return pad_silence(tone(25), 40 * FRAME / SAMPLE_RATE)


# --- VAD and metrics -----------------------------------------------------------------------------------

def test_vad_marks_the_burst_dilated_and_the_padding_silent():
    audio, pad = burst_clip()
    assert pad == 40 and len(audio) == 105 * FRAME
    speech = speech_frames(audio)
    expected = np.zeros(105, bool)
    expected[40 - VAD_DILATE:65 + VAD_DILATE] = True
    np.testing.assert_array_equal(speech, expected)


def test_vad_range_is_30_db_below_the_loudest_frame():
    quiet_20db, quiet_40db = tone(10, 0.03), tone(10, 0.003)
    audio = np.concatenate([np.zeros(20 * FRAME, np.float32), tone(10), np.zeros(20 * FRAME, np.float32),
                            quiet_20db, np.zeros(20 * FRAME, np.float32), quiet_40db,
                            np.zeros(20 * FRAME, np.float32)])
    speech = speech_frames(audio)
    assert speech[20:30].all() and speech[50:60].all()  # loud, and 20 dB below it
    assert not speech[80:90].any()  # 40 dB below the loudest frame: silence


def test_jaw_open_exactly_on_the_burst_passes():
    audio, pad = burst_clip()
    jaw = np.zeros(105)
    jaw[40:65] = 0.2
    m = jaw_metrics(jaw, audio, pad)
    assert m["passed"] and m["moves"] and m["closes"] and m["opens"] and not m["over_closed"]
    assert m["movement"] == pytest.approx(0.2)
    assert m["silence_p90"] == 0.0 and m["silence_max"] == 0.0
    assert m["padding_in_silence"] == pytest.approx((40 - VAD_DILATE) / 40)
    assert m["envelope_r"] > 0.8


def test_jaw_open_in_silence_fails_and_a_still_jaw_fails():
    audio, pad = burst_clip()
    open_everywhere = np.full(105, 0.2)
    m = jaw_metrics(open_everywhere, audio, pad)
    assert not m["closes"] and not m["moves"] and not m["passed"]
    open_in_silence = np.full(105, 0.2)
    open_in_silence[40:65] = 0.25  # moves 0.05 rad, but the mouth stays open after speech
    m = jaw_metrics(open_in_silence, audio, pad)
    assert m["moves"] and not m["closes"] and not m["passed"]
    m = jaw_metrics(np.zeros(105), audio, pad)
    assert m["closes"] and not m["moves"] and not m["passed"]


def test_a_jaw_below_zero_is_over_closed_and_never_opens():
    audio, pad = burst_clip()
    jaw = np.full(105, -0.08)
    jaw[40:65] = -0.02  # moves 0.06 relative to silence, but never opens past closed
    m = jaw_metrics(jaw, audio, pad)
    assert m["moves"] and m["closes"] and m["over_closed"] and not m["opens"]


def test_metrics_refuse_audio_without_silence_or_sound():
    with pytest.raises(Exception, match="no silence"):
        jaw_metrics(np.zeros(20), tone(20), 0)
    with pytest.raises(Exception, match="silent"):
        jaw_metrics(np.zeros(20), np.zeros(20 * FRAME, np.float32), 0)


def test_noise_and_gain_variants_have_the_asked_levels():
    audio, _ = burst_clip()
    out = dict(variants(audio, [20.0], [-20.0], seed=0))
    assert list(out) == ["clean", "snr20", "gain-20"]
    speech = np.repeat(speech_frames(audio), FRAME)  # the VAD's speech frames, dilation included
    noise = out["snr20"] - audio
    snr = 10 * np.log10(np.mean(audio[speech] ** 2) / np.mean(noise ** 2))
    assert snr == pytest.approx(20.0, abs=0.3)
    np.testing.assert_allclose(out["gain-20"], audio * 0.1, rtol=1e-5)


def test_pink_noise_and_room_tone_variants_have_the_asked_levels():
    audio, _ = burst_clip()
    out = dict(variants(audio, [], [], seed=0, pink_snrs=[20.0], room_tones=[-60.0, -92.0]))
    assert list(out) == ["clean", "pink20", "tone-60", "tone-92"]
    speech = np.repeat(speech_frames(audio), FRAME)
    pink = out["pink20"] - audio
    assert 10 * np.log10(np.mean(audio[speech] ** 2) / np.mean(pink ** 2)) == pytest.approx(20.0, abs=0.3)
    # pink: more power in 20-500 Hz than in 2-8 kHz (1/f: ln 25 vs ln 4; white noise: 0.08 times as much)
    spectrum = np.abs(np.fft.rfft(pink)) ** 2
    freqs = np.fft.rfftfreq(len(pink), 1 / SAMPLE_RATE)
    assert spectrum[(freqs > 20) & (freqs < 500)].sum() > 1.5 * spectrum[freqs > 2000].sum()
    for dbfs in (-60.0, -92.0):  # absolute level, whatever the speech's
        tone = out[f"tone{dbfs:g}"] - audio
        assert 10 * np.log10(np.mean(tone.astype(np.float64) ** 2)) == pytest.approx(dbfs, abs=0.3)


def test_rests_shut_compares_the_silence_mean_with_the_speech_p20():
    audio, _ = burst_clip()
    speech = speech_frames(audio)
    jaw = np.where(speech, 0.08, 0.0)
    jaw[np.flatnonzero(speech)[:len(speech) // 10]] = 0.01  # a few nearly shut speech frames
    m = jaw_metrics(jaw, audio)
    assert m["speech_p20"] == pytest.approx(np.percentile(jaw[speech], 20))
    assert m["rests_shut"]
    ajar = np.where(speech, jaw, 0.07)
    assert not jaw_metrics(ajar, audio)["rests_shut"]


# --- the command end to end ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def espeak_wav(tmp_path_factory):
    from training import espeak

    if not espeak.available():
        pytest.skip("espeak-ng C library not installed (make system)")
    utt = espeak.synthesize("Papa bought a big map.", espeak.Voice("en-us", rate=170))
    path = tmp_path_factory.mktemp("speech") / "papa.wav"
    sf.write(path, utt.audio, SAMPLE_RATE)
    return path


@pytest.mark.parametrize("mode", ["offline", "stream"])
def test_voice_check_end_to_end_on_espeak_speech(espeak_wav, tmp_path, mode, capsys):
    out = tmp_path / "vc.json"
    model = REPO / "models" / ("demo" if mode == "offline" else "demo-student")
    argv = ["voice-check", "--model", str(model), "--style", "big_mouth", "--audio", str(espeak_wav),
            "--pad-s", "1.0", "--gain-db", "-20", "--threads", "1", "--json", str(out), "--clean-only"]
    argv += ["--steps", "2"] if mode == "offline" else ["--stream"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["mode"] == mode and result["steps"] == (2 if mode == "offline" else 1)
    assert [r["variant"] for r in result["results"]] == ["clean", "gain-20"]
    seconds = sf.info(str(espeak_wav)).duration
    for r in result["results"]:
        assert r["file"] == "papa.wav" and r["seconds"] == pytest.approx(seconds, abs=1e-3)
        # 1.0 s = 25 frames each side; only the dilation next to the speech may leave silence
        assert r["padding_in_silence"] >= (25 - VAD_DILATE) / 25 - 1e-9
        assert r["silence_frames"] >= 2 * (25 - VAD_DILATE)
        assert r["speech_frames"] + r["silence_frames"] == r["frames"]
        for key in ("speech_mean", "speech_p90", "silence_mean", "silence_p90", "silence_max", "movement",
                    "envelope_r"):
            assert np.isfinite(r[key]), key
    assert result["summary"]["clean"]["files"] == 1
    described = " ".join(DEFINITIONS)
    for key in ("vad", "speech_p90", "silence_p90", "silence_max", "movement", "envelope_r", "moves", "closes",
                "passed", "variant", "padding_in_silence"):
        assert key in described, key
    assert "summary" in capsys.readouterr().out


def test_voice_check_errors_name_the_problem(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nope.wav"
    assert main(["voice-check", "--audio", str(missing), "--threads", "1"]) == 2
    assert f"audio file not found: {missing}" in capsys.readouterr().err
    empty = tmp_path / "voices"
    empty.mkdir()
    assert main(["voice-check", "--voices", str(empty), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert f"no recordings in {empty}" in err and "voices fetch" in err
    (empty / "manifest.json").write_text(json.dumps({"recordings": [{"file": "gone.wav"}]}))
    assert main(["voice-check", "--voices", str(empty), "--threads", "1"]) == 2
    assert "gone.wav, which is missing" in capsys.readouterr().err
    monkeypatch.setenv("DPT_LIVE_CACHE", str(tmp_path / "cache"))  # bare --voices: the cache's folder
    assert main(["voice-check", "--voices", "--threads", "1"]) == 2
    assert f"no recordings in {tmp_path / 'cache' / 'real-voices'}" in capsys.readouterr().err


# --- voices fetch: conversion of a package's recordings (no network) ----------------------------------

def test_convert_source_writes_16k_mono_wavs_and_manifest_entries(tmp_path):
    root = tmp_path / "pkg"
    (root / "sounds").mkdir(parents=True)
    t = np.arange(8000) / 8000
    stereo_8k = np.stack([0.3 * np.sin(2 * np.pi * 300 * t)] * 2, axis=1)
    sf.write(root / "sounds" / "hello.wav", stereo_8k, 8000)
    raw = (0.25 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000) * 32767).astype("<i2")
    (root / "sounds" / "raw_take.raw").write_bytes(raw.tobytes())
    source = real_voices.Source("fake", "pypi", "fake-pkg", "1.0", "MIT (LICENSE)", "someone", "en",
                                lambda r: sorted((r / "sounds").iterdir()))
    out = tmp_path / "out"
    out.mkdir()
    entries = real_voices.convert_source(source, root, "1.0", out)
    assert [e["file"] for e in entries] == ["fake__hello.wav", "fake__raw_take.wav"]
    for e in entries:
        info = sf.info(str(out / e["file"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert e["seconds"] == pytest.approx(1.0, abs=0.01)
        assert e["package"] == "fake-pkg" and e["version"] == "1.0" and e["license"] == "MIT (LICENSE)"
    assert entries[1]["original_path"] == "sounds/raw_take.raw"
    back, _ = sf.read(str(out / "fake__raw_take.wav"))
    assert np.max(np.abs(back)) == pytest.approx(0.25, abs=0.01)  # s16le read at the right scale

    gone = real_voices.Source("gone", "debian", "gone-pkg", None, "", "", "en", lambda r: [r / "missing.wav"])
    with pytest.raises(real_voices.SourceError, match="gone-pkg.*missing.wav"):
        real_voices.convert_source(gone, root, "2", out)


def test_longest_recordings_are_a_deterministic_capped_sample(tmp_path):
    for name, seconds in [("a", 3), ("b", 9), ("c", 13), ("d", 5), ("e", 9)]:
        sf.write(tmp_path / f"{name}.wav", np.zeros(int(seconds * 8000), np.float32), 8000)
    picked = real_voices._longest(sorted(tmp_path.glob("*.wav")), 3, 12.0)
    assert [p.stem for p in picked] == ["b", "d", "e"]  # c is over the cap; sorted by name
