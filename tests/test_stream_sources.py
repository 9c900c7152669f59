"""Audio sources (file, push, microphone error and loss paths), the runner, and the `stream` CLI."""

from __future__ import annotations

import builtins
import json
import logging
import threading

import numpy as np
import pytest
import soundfile as sf
import torch

from diffposetalk.model import Guidance
from diffposetalk.sampler import DDIMSampler
from diffposetalk.synth_audio import speechlike
from streaming.factory import open_session
from streaming.runner import run_stream
from streaming.session import StreamConfig
from streaming.sources import (
    AudioSourceError,
    FileSource,
    MicrophoneSource,
    PushSource,
    import_sounddevice,
)


def new_session(loaded):
    return open_session(loaded, DDIMSampler(1), Guidance(), StreamConfig(160, 80, 400))


@pytest.fixture(scope="module")
def stereo_44k(tmp_path_factory):
    rate = 44100
    mono = speechlike(1.5, seed=7)
    t = np.arange(int(1.5 * rate)) / rate
    left = np.interp(t, np.arange(len(mono)) / 16000, mono)
    path = tmp_path_factory.mktemp("audio") / "stereo44k.wav"
    sf.write(path, np.stack([left, 0.5 * left], 1).astype(np.float32), rate)
    return path


# --- file source ----------------------------------------------------------------------------------

def test_file_source_resamples_stereo(stereo_44k):
    blocks = list(FileSource(stereo_44k).blocks())
    total = sum(len(b.samples) for b in blocks)
    assert total == 24000 and all(b.samples.ndim == 1 and b.samples.dtype == np.float32 for b in blocks)
    assert max(len(b.samples) for b in blocks[:-1]) <= 640  # 20 ms blocks (HQ soxr releases bursts)


def test_file_source_realtime_pacing(stereo_44k):
    now = [100.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    src = FileSource(stereo_44k, realtime=True, block_ms=100, clock=lambda: now[0], sleep=sleep)
    times = [b.time for b in src.blocks()]
    # each block is stamped (and released) when its last sample would have been spoken
    assert times[0] == pytest.approx(100.1) and times[-2] == pytest.approx(101.5)
    assert sum(slept) == pytest.approx(1.5)


def test_file_source_errors(tmp_path):
    with pytest.raises(AudioSourceError, match="not found"):
        FileSource(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(AudioSourceError, match="cannot read"):
        FileSource(bad)


# --- push source and the runner -------------------------------------------------------------------

def test_push_source_int16_stereo_from_thread(loaded):
    rate = 44100
    mono = speechlike(2.0, seed=8)
    t = np.arange(2 * rate) / rate
    x = np.interp(t, np.arange(len(mono)) / 16000, mono)
    pcm = (np.stack([x, x], 1) * 32767).astype(np.int16)
    src = PushSource(rate=rate, channels=2, dtype="int16")

    def feed():
        for i in range(0, len(pcm), 882):  # 20 ms of interleaved bytes at a time
            src.push(pcm[i:i + 882].tobytes())
        src.end()

    threading.Thread(target=feed).start()
    session = new_session(loaded)
    got = []
    result = run_stream(src, session, got.extend)
    assert result.reason == "end of audio" and result.samples == 32000
    assert len(got) == result.frames == 50
    assert np.all(np.isfinite(np.stack([f.exp for f in got])))


def test_source_lost_ends_session_cleanly(loaded, caplog):
    src = PushSource()
    audio = speechlike(1.0)
    src.push(audio[:12000])
    src.lost("client disconnected")
    with caplog.at_level(logging.ERROR, logger="dpt_live.stream"):
        result = run_stream(src, new_session(loaded))
    assert result.reason.startswith("source lost") and result.frames == 12000 // 640
    assert any("audio source lost: client disconnected" in r.message for r in caplog.records)


def test_runner_stop_event(loaded):
    src = PushSource()
    for _ in range(10):
        src.push(np.zeros(1600, np.float32))
    src.end()
    stop = threading.Event()
    stop.set()
    result = run_stream(src, new_session(loaded), stop=stop)
    assert result.reason == "stopped" and result.samples == 1600


# --- microphone -----------------------------------------------------------------------------------

def test_mic_without_portaudio(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(AudioSourceError, match="PortAudio"):
        import_sounddevice()


def test_mic_on_this_machine_gives_clear_error():
    # CI machines have no sound card (and maybe no PortAudio): either way a clear UserError
    with pytest.raises(AudioSourceError, match="no audio input device|PortAudio|sounddevice"):
        MicrophoneSource()


class FakeStream:
    def __init__(self, callback, finished_callback, blocks, blocksize, lose, **kw):
        self.callback, self.finished = callback, finished_callback
        self.blocks, self.blocksize, self.lose = blocks, blocksize, lose

    def start(self):
        def play():
            for b in range(self.blocks):
                self.callback(np.full((self.blocksize, 1), 0.01 * (b % 7), np.float32), self.blocksize, None, None)
            if self.lose:
                self.finished()  # PortAudio ends the stream: the device went away
        threading.Thread(target=play, daemon=True).start()

    def stop(self):
        pass

    def close(self):
        pass


class FakeSoundDevice:
    def __init__(self, blocks=50, lose=True):
        self.blocks, self.lose = blocks, lose

    def query_devices(self):
        return [{"name": "HDMI out", "max_input_channels": 0, "default_samplerate": 48000.0},
                {"name": "USB Mic", "max_input_channels": 1, "default_samplerate": 48000.0}]

    def InputStream(self, **kw):
        return FakeStream(blocks=self.blocks, lose=self.lose, **kw)


def test_mic_device_choice():
    sd = FakeSoundDevice(blocks=0, lose=False)
    assert MicrophoneSource("usb", sd=sd).index == 1
    assert MicrophoneSource(1, sd=sd).name == "USB Mic"
    with pytest.raises(AudioSourceError, match="no audio input device 'HDMI'.*1: USB Mic"):
        MicrophoneSource("HDMI", sd=sd)


@pytest.mark.parametrize("lose", [True, False])
def test_mic_lost_mid_stream(loaded, caplog, lose):
    # lose=True: PortAudio finishes the stream; False: the callbacks just stop (stall timeout)
    mic = MicrophoneSource(sd=FakeSoundDevice(blocks=50, lose=lose), stall_s=0.3)
    with caplog.at_level(logging.ERROR, logger="dpt_live.stream"):
        result = run_stream(mic, new_session(loaded))
    assert result.reason.startswith("source lost") and result.samples == 16000  # 50 x 20 ms
    assert result.frames == 25
    assert any("audio source lost" in r.message and "USB Mic" in r.message for r in caplog.records)


# --- CLI ------------------------------------------------------------------------------------------

@pytest.fixture()
def cli_main(monkeypatch):
    from dpt_live import cli

    if "dpt_live.commands.stream" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + ["dpt_live.commands.stream"])
    before = torch.get_num_threads()
    yield cli.main
    torch.set_num_threads(before)


def test_cli_stream_round_trip(cli_main, tiny_model_dir, speech_like_wav, tmp_path):
    out, rep, clip = tmp_path / "s.npz", tmp_path / "r.json", tmp_path / "clip.npz"
    rng = np.random.default_rng(0)
    np.savez(clip, exp=rng.normal(size=(100, 50)), pose=rng.normal(scale=0.1, size=(100, 6)))
    rc = cli_main(["stream", "--model", str(tiny_model_dir), "--audio", str(speech_like_wav), "-o", str(out),
                   "--report", str(rep), "--eyes", "--hop-ms", "160", "--steps", "1", "--threads", "1",
                   "--style", str(clip)])  # style from a reference motion clip
    assert rc == 0
    with np.load(out) as d:
        arrays = {k: d[k] for k in d.files}
    T = int(5.3 * 25)
    assert {k: v.shape for k, v in arrays.items()} == {
        "exp": (T, 50), "pose": (T, 6), "shape": (T, 100), "eyes": (T, 4),
        "audio_time": (T,), "emit_time": (T,), "arrival_time": (T,)}
    report = json.loads(rep.read_text())
    assert report["frames"] == T and report["window"]["hop_ms"] == 160
    assert set(report["step_compute_ms"]) >= {"p50", "p95", "p99"} and report["real_time_factor"] > 0
    assert report["frame_latency_ms"] is None and report["replayed_frame_latency_ms"]["max"] > 0
    assert report["end_reason"] == "end of audio"
    # same layout as offline animate for the keys they share
    anim = tmp_path / "a.npz"
    assert cli_main(["animate", "--model", str(tiny_model_dir), "--audio", str(speech_like_wav), "-o", str(anim),
                     "--sampler", "ddim", "--steps", "1", "--threads", "1"]) == 0
    with np.load(anim) as a:
        assert {k: a[k].shape for k in a.files} == {k: arrays[k].shape for k in ("exp", "pose", "shape")}


def test_cli_errors(cli_main, tiny_model_dir, speech_like_wav, tmp_path, capsys):
    args = ["stream", "--model", str(tiny_model_dir), "-o", str(tmp_path / "x.npz")]
    assert cli_main(args + ["--audio", str(speech_like_wav), "--hop-ms", "50"]) == 2
    assert "multiple of 40" in capsys.readouterr().err
    assert cli_main(args + ["--mic", "--threads", "1"]) == 2  # no sound card (or no PortAudio) here
    err = capsys.readouterr().err
    assert "stream: error:" in err and any(w in err for w in ("no audio input device", "PortAudio", "sounddevice"))
