"""The speech gate (streaming/speech_gate.py): room tone and noise reach the encoder as silence,
speech passes with its onsets, decisions do not depend on how audio is cut into blocks, and a live
session's features in room tone equal those of digital silence."""

from __future__ import annotations

import numpy as np
import pytest

from diffposetalk.model import Guidance
from diffposetalk.sampler import DDIMSampler
from diffposetalk.synth_audio import speechlike
from diffposetalk.units import SAMPLE_RATE
from streaming.factory import open_session
from streaming.session import StreamConfig
from streaming.speech_gate import VAD_FRAME, SpeechGate, gate_clip

pytest.importorskip("webrtcvad")


def tone(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(scale=10 ** (dbfs / 20), size=int(seconds * SAMPLE_RATE)).astype(np.float32)


@pytest.mark.parametrize("dbfs", [-92.0, -60.0])
def test_room_tone_alone_is_gated_to_silence(dbfs):
    assert not np.any(gate_clip(tone(3.0, dbfs)))


def test_speech_passes_with_a_preroll_and_a_hangover():
    quiet, burst = tone(2.0, -70.0), speechlike(1.5)
    x = np.concatenate([quiet, burst, tone(2.0, -70.0, seed=1)])
    g = gate_clip(x)
    start, end = len(quiet), len(quiet) + len(burst)
    assert np.mean(g[start:end] != 0) > 0.9  # the speech itself
    assert np.all(g[start - SAMPLE_RATE // 10 - 1:start - SAMPLE_RATE // 2] == 0)  # far before: shut
    assert np.any(g[start - SAMPLE_RATE // 20:start] != 0)  # the preroll opens ~60 ms before the onset
    assert np.any(g[end:end + SAMPLE_RATE // 10] != 0)  # the hangover keeps it open after the last word
    assert not np.any(g[end + SAMPLE_RATE // 2:])  # and then it shuts
    # a DC offset does not read as speech
    assert not np.any(gate_clip(tone(2.0, -70.0) + 0.3))


def test_gains_do_not_depend_on_the_blocks_and_ramp():
    rng = np.random.default_rng(3)
    x = np.concatenate([tone(1.0, -60.0), speechlike(1.0), tone(1.0, -60.0, seed=2)])
    whole = gate_clip(x)
    gate = SpeechGate()
    i = 0
    while i < len(x):
        n = int(rng.integers(1, 2000))
        gate.push(x[i:i + n])
        i += n
    gate.push(np.zeros(VAD_FRAME, np.float32))
    np.testing.assert_array_equal(gate.apply(x, 0), whole)
    gains = gate.gains(0, len(x))
    assert gains is not None and gains.min() == 0.0 and gains.max() == 1.0
    assert np.abs(np.diff(gains)).max() <= 1.0 / VAD_FRAME + 1e-6  # ramps, no clicks
    assert gate.gains(SAMPLE_RATE + SAMPLE_RATE // 4, SAMPLE_RATE + SAMPLE_RATE // 2) is None  # open: no multiply


def test_a_session_in_room_tone_sees_what_it_sees_in_digital_silence(loaded):
    """The whole point: with the gate, faint noise gives the encoder the same input as zeros."""
    def features(audio, gate):
        seen = []
        session = open_session(loaded, DDIMSampler(1), Guidance(), StreamConfig(80, 80, 400, speech_gate=gate))
        original = session.audio.features
        session.audio.features = lambda w: seen.append(w.copy()) or original(w)
        session.feed(audio)
        return np.stack(seen)

    zeros = features(np.zeros(2 * SAMPLE_RATE, np.float32), True)
    np.testing.assert_array_equal(features(tone(2.0, -60.0), True), zeros)
    assert np.abs(features(tone(2.0, -60.0), False)).max() > 1e-3  # without the gate the noise gets through


def test_animate_speech_gate_turns_room_tone_into_silence(tiny_model_dir, tmp_path):
    import soundfile as sf

    from dpt_live.cli import main

    outs = {}
    for name, audio, gate in (("tone", tone(3.0, -60.0), True), ("zeros", np.zeros(3 * SAMPLE_RATE, np.float32), False),
                              ("tone-ungated", tone(3.0, -60.0), False)):
        wav = tmp_path / f"{name}.wav"
        sf.write(wav, audio, SAMPLE_RATE, subtype="FLOAT")
        out = tmp_path / f"{name}.npz"
        argv = ["animate", "--model", str(tiny_model_dir), "--audio", str(wav), "--sampler", "ddim", "--steps", "2",
                "-o", str(out)] + (["--speech-gate"] if gate else [])
        assert main(argv) == 0
        outs[name] = np.load(out)["exp"]
    np.testing.assert_array_equal(outs["tone"], outs["zeros"])
    assert np.abs(outs["tone-ungated"] - outs["zeros"]).max() > 0  # the gate is what made them equal
