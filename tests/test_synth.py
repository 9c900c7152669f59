"""SynthTalk generator: espeak binding, motion model, the lmdb it writes, determinism, CLI."""

from __future__ import annotations

import argparse
import io
import json
import pickle

import numpy as np
import pytest

from training import espeak

pytestmark = pytest.mark.skipif(not espeak.available(),
                                reason="espeak-ng C library not installed (make system)")

SPEAKERS = 4
SECONDS_PER_SPEAKER = 26


def _generate(path, seed, clips_per_speaker=2):
    from training.synth import generate_world

    return generate_world(path, SPEAKERS, SPEAKERS * SECONDS_PER_SPEAKER / 60, seed,
                          clips_per_speaker=clips_per_speaker)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "world"
    return path, _generate(path, seed=7)


def _lmdb_items(lmdb_dir) -> dict[bytes, bytes]:
    from training.dataset import TfhpLmdb

    return dict(TfhpLmdb(lmdb_dir).raw_items())


def _timings(world_dir, entry):
    return json.loads((world_dir / "phonemes" / f"{entry.replace('/', '_')}.json").read_text())


# --- espeak -------------------------------------------------------------------------------------

def test_espeak_is_repeatable_and_voice_dependent():
    text = "Hello there, my friend. How are you today?"
    first = espeak.synthesize(text, espeak.Voice("en-us+f3", rate=170))
    espeak.synthesize("Something else in between.", espeak.Voice("en+klatt2", pitch=80))
    again = espeak.synthesize(text, espeak.Voice("en-us+f3", rate=170))
    assert np.array_equal(first.audio, again.audio) and first.phonemes == again.phonemes
    faster = espeak.synthesize(text, espeak.Voice("en-us+f3", rate=300))
    assert faster.duration < 0.8 * first.duration
    assert first.audio.dtype == np.float32 and first.audio.ndim == 1
    assert [w for w, _ in first.words] == ["Hello", "there", "my", "friend", "How", "are", "you", "today"]


def test_espeak_phoneme_timings_match_the_audio():
    utt = espeak.synthesize("Papa bought a big map. Some people sleep.", espeak.Voice("en-us", rate=160))
    starts = [s for _, s in utt.phonemes]
    assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] <= utt.duration
    ends = starts[1:] + [utt.duration]
    from training.synth.visemes import is_pause, is_vowel

    def rms(s, e):
        seg = utt.audio[int(s * 16000):int(e * 16000)]
        return float(np.sqrt(np.mean(seg ** 2))) if len(seg) else 0.0

    vowels = [rms(s, e) for (p, s), e in zip(utt.phonemes, ends) if is_vowel(p)]
    pauses = [rms(s, e) for (p, s), e in zip(utt.phonemes, ends) if is_pause(p) and e - s > 0.05]
    assert len(vowels) >= 8 and pauses
    assert min(vowels) > 10 * max(pauses)


def test_espeak_unknown_voice_and_missing_library(monkeypatch):
    with pytest.raises(ValueError, match="no voice"):
        espeak.synthesize("hello", espeak.Voice("xx-nonexistent"))
    monkeypatch.setattr(espeak, "_LIBRARY_NAMES", ("libdoes-not-exist.so.9",))
    monkeypatch.setattr(espeak.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(espeak.EspeakUnavailable, match="apt-get install"):
        espeak._Engine()


# --- motion model -------------------------------------------------------------------------------

def test_articulation_leads_the_sound_by_the_anticipation():
    from training.synth.motion import RATE, MotionStyle, articulation

    segments = [("_", 0.0, 1.0), ("m", 1.0, 1.08), ("A:", 1.08, 1.4), ("_", 1.4, 2.5)]
    _, lead = articulation(segments, 2.5, MotionStyle(anticipation=0.06))
    _, none = articulation(segments, 2.5, MotionStyle(anticipation=0.0))
    jaw_lead, jaw_none = lead[:, 0], none[:, 0]
    lags = np.arange(-30, 31)
    corr = [np.dot(np.roll(jaw_lead, lag), jaw_none) for lag in lags]
    assert lags[int(np.argmax(corr))] == int(round(0.06 * RATE))
    assert jaw_lead[int(0.5 * RATE)] < 1e-3 and jaw_lead[int(2.3 * RATE)] < 1e-3  # closed in silence
    assert jaw_lead[int(1.25 * RATE)] > 0.2  # wide open on /A:/
    closure = lead[:, 2]
    assert closure[int(1.0 * RATE)] > 0.7  # lips pressed on /m/ (led by 60 ms)


def test_jaw_is_open_in_vowels_closed_in_silence_and_leads_audio(world):
    from training.dataset import TfhpLmdb
    from training.synth.visemes import VISEMES, is_vowel, visemes_of

    path, _ = world
    data = TfhpLmdb(path / "lmdb")
    speakers = json.loads((path / "speakers.json").read_text())["speakers"]
    leads = []
    for split in ("train", "val", "test"):
        for entry in data.list_entries(split):
            clip, info = data.read_clip(entry), _timings(path, entry)
            amp = speakers[entry.split("/")[0]]["style"]["mouth_amp"]
            jaw, closure = clip["pose"][:, 3], clip["exp"][:, 1]
            t = np.arange(len(jaw)) / 25 + info["anticipation"]  # the sound each frame shows
            vowel, silent = np.zeros(len(jaw), bool), np.zeros(len(jaw), bool)
            for p, s, e in info["phonemes"]:
                if is_vowel(p) and e - s > 0.06 and VISEMES[visemes_of(p)[0][0]][0] > 0.1:
                    vowel |= (t > s + 0.01) & (t < e - 0.01)
            edges = [0.0] + [x for s, e, _ in info["utterances"] for x in (s, e)] + [len(jaw) / 25]
            for s, e in zip(edges[::2], edges[1::2]):  # before, between and after utterances
                silent |= (t > s + 0.15) & (t < e - 0.15)
            assert vowel.sum() > 5 and silent.sum() > 3, entry
            assert jaw[vowel].mean() > 0.08 * amp, entry
            assert np.abs(jaw[silent]).max() < 0.02, entry
            assert jaw[vowel].mean() > 5 * np.abs(jaw[silent]).mean(), entry
            assert np.all(closure[silent] > 0.05), entry  # lips lightly closed (exp[1] ~ 0.2)

            # the mouth leads: jaw[t] matches the audio energy of later frames better
            audio = clip["audio"] - clip["audio"].mean()
            energy = np.log(np.sqrt((audio.reshape(len(jaw), 640) ** 2).mean(1)) + 1e-4)
            corr = {lag: np.corrcoef(jaw[:len(jaw) - 3], energy[lag:len(jaw) - 3 + lag])[0, 1]
                    for lag in range(0, 4)}
            back = np.corrcoef(jaw[1:], energy[:-1])[0, 1]
            leads.append(max(corr, key=corr.get) >= 0 and corr[1] > back)
    assert np.mean(leads) >= 0.75


def test_phoneme_events_line_up_with_audio_energy(world):
    from training.dataset import TfhpLmdb
    from training.synth.visemes import is_pause

    path, _ = world
    data = TfhpLmdb(path / "lmdb")
    checked = 0
    for split in ("train", "val", "test"):
        for entry in data.list_entries(split):
            info = _timings(path, entry)
            noise = info["augmentation"]["noise"]
            if noise["kind"] != "none" and noise["snr_db"] < 20:
                continue  # loud noise fills the gaps; the clean alignment is tested on espeak
            audio = data.read_clip(entry)["audio"]
            audio = audio - audio.mean()

            def power(s, e, audio=audio):
                return float(np.mean(audio[int(s * 16000):int(e * 16000)] ** 2))

            speech = [power(s, e) for p, s, e in info["phonemes"] if not is_pause(p) and e - s > 0.04]
            spans = [(s, e) for s, e, _ in info["utterances"]]
            gaps = [power(e1 + 0.05, s2 - 0.05) for (_, e1), (s2, _) in zip(spans, spans[1:])]
            assert np.median(speech) > 10 * np.median(gaps), entry
            checked += 1
    assert checked >= 1


# --- the lmdb it writes -------------------------------------------------------------------------

def test_lmdb_layout_is_exactly_hdtf_tfhp(world):
    import soundfile as sf

    from training.tfhp_format import decode_value

    path, summary = world
    items = _lmdb_items(path / "lmdb")
    all_items = dict(items)
    assert decode_value(items.pop(b"metadata"), "m") == {"seg_len": 100}
    entries = sorted({k.decode().rsplit("/", 1)[0] for k in items})
    assert len(entries) == SPEAKERS * 2
    for entry in entries:
        meta = decode_value(items.pop(f"{entry}/metadata".encode()), entry)
        assert set(meta) == {"n_frames"} and isinstance(meta["n_frames"], int)
        n_frames, seg = meta["n_frames"], 0
        total = 0
        while f"{entry}/{seg:03d}".encode() in items:
            raw = items.pop(f"{entry}/{seg:03d}".encode())
            assert raw[:2] == b"\x80\x04"  # pickle protocol 4
            value = decode_value(raw, entry)
            assert set(value) == {"coef", "audio"} and set(value["coef"]) == {"shape", "exp", "pose"}
            n = len(value["coef"]["exp"])
            for key, dim in (("shape", 100), ("exp", 50), ("pose", 6)):
                arr = value["coef"][key]
                assert type(arr) is np.ndarray and arr.dtype == np.float32 and arr.shape == (n, dim)
            assert type(value["audio"]) is bytes
            info = sf.info(io.BytesIO(value["audio"]))
            assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
            assert info.frames == n * 640
            assert n == min(100, n_frames - total)  # full segments, the last one shorter
            total += n
            seg += 1
        assert total == n_frames and seg == -(-n_frames // 100)
        pose = np.concatenate([decode_value(all_items[f"{entry}/{s:03d}".encode()], entry)["coef"]["pose"]
                               for s in range(seg)])
        assert np.all(pose[:, 4:] == 0)  # jaw y/z
        assert np.abs(pose[:, :4]).max() < 0.6
    assert not items  # no other keys


def test_splits_are_speaker_disjoint_and_match_speakers_json(world):
    path, summary = world
    persons = {}
    for split in ("train", "val", "test"):
        lines = (path / "lmdb" / f"{split}.txt").read_text().split()
        assert lines, split
        persons[split] = {line.split("/")[0] for line in lines}
        assert all(len(line.split("/")[1]) == 3 for line in lines)
    assert not persons["train"] & persons["val"] and not persons["train"] & persons["test"]
    assert not persons["val"] & persons["test"]
    speakers = json.loads((path / "speakers.json").read_text())["speakers"]
    assert set(speakers) == set().union(*persons.values())
    for split, members in persons.items():
        assert all(speakers[p]["split"] == split for p in members)
        assert sorted(members) == summary.speakers[split]
    style = speakers["S000"]["style"]
    assert 0.5 <= style["mouth_amp"] <= 1.6 and 0.04 <= style["anticipation"] <= 0.08
    assert len(speakers["S000"]["shape"]) == 100 and speakers["S000"]["voice"]["name"].startswith("en")


def test_stats_are_computed_over_train_frames_only(world):
    from training.dataset import TfhpLmdb, load_stats

    path, _ = world
    data = TfhpLmdb(path)
    stats = load_stats(path / "lmdb" / "stats_train.npz")

    def gather(splits):
        clips = [data.read_clip(e) for s in splits for e in data.list_entries(s)]
        return {k: np.concatenate([c[k] for c in clips]).astype(np.float64) for k in ("shape", "exp", "pose")}

    train, everything = gather(["train"]), gather(["train", "val", "test"])
    for key in ("shape", "exp", "pose"):
        np.testing.assert_allclose(stats[f"{key}_mean"], train[key].mean(0), atol=1e-5)
        std = train[key].std(0)
        expected = np.where(std < 1e-6, 1.0, std)
        np.testing.assert_allclose(stats[f"{key}_std"], expected, rtol=1e-4, atol=1e-6)
        assert np.all(stats[f"{key}_std"] > 0)
    assert not np.allclose(stats["exp_mean"], everything["exp"].mean(0), atol=1e-4)
    assert np.all(train["exp"].std(0) > 1e-3)  # every expression component moves


def test_same_seed_gives_identical_bytes_and_other_seed_differs(world, tmp_path):
    path, _ = world
    _generate(tmp_path / "same", seed=7)
    _generate(tmp_path / "other", seed=8)
    reference = _lmdb_items(path / "lmdb")
    assert _lmdb_items(tmp_path / "same" / "lmdb") == reference
    for name in ("train.txt", "val.txt", "test.txt", "stats_train.npz"):
        assert (tmp_path / "same" / "lmdb" / name).read_bytes() == (path / "lmdb" / name).read_bytes()
    assert (tmp_path / "same" / "speakers.json").read_bytes() == (path / "speakers.json").read_bytes()
    other = _lmdb_items(tmp_path / "other" / "lmdb")
    shared = set(other) & set(reference) - {b"metadata"}
    assert shared and all(other[k] != reference[k] for k in shared if not k.endswith(b"/metadata"))


def test_augmentation_changes_audio_only():
    from training.synth.augment import augment

    t = np.arange(32000) / 16000
    clean = (0.05 * np.sin(2 * np.pi * 220 * t) * (t > 0.5)).astype(np.float32)
    kinds = set()
    for seed in range(12):
        out, params = augment(clean, np.random.default_rng(seed))
        assert out.shape == clean.shape and out.dtype == np.float32 and np.all(np.isfinite(out))
        assert out.min() >= -1 and out.max() < 1
        assert -20 <= params["gain_db"] <= 6
        if params["noise"]["kind"] != "none":
            assert 5 <= params["noise"]["snr_db"] <= 40
        kinds.add((params["noise"]["kind"], params["filter"]["kind"]))
    assert len({k[0] for k in kinds}) >= 3 and len({k[1] for k in kinds}) >= 3


def test_values_hold_only_plain_data(world):
    path, _ = world
    import pickletools

    for raw in list(_lmdb_items(path / "lmdb").values())[:20]:
        names = [arg for op, arg, _ in pickletools.genops(raw) if op.name == "SHORT_BINUNICODE"]
        modules = {n for n in names if n.startswith("numpy")}
        assert modules <= {"numpy", "numpy._core.multiarray", "numpy.core.multiarray"}
        pickle.loads(raw)  # our own test data: a plain load is fine here


# --- CLI ----------------------------------------------------------------------------------------

def test_synth_command(tmp_path, capsys):
    from diffposetalk.errors import UserError
    from dpt_live.commands.synth import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "cli"
    args = parser.parse_args(["synth", "--out", str(out), "--speakers", "3", "--minutes", "0.5",
                              "--seed", "1", "--clips-per-speaker", "1"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "0.5 min" in printed and "train: 1 speakers" in printed and str(out) in printed
    assert (out / "lmdb" / "data.mdb").is_file() and len(list((out / "phonemes").glob("*.json"))) == 3
    with pytest.raises(UserError, match="already exists"):
        args.func(args)
    bad = parser.parse_args(["synth", "--out", str(tmp_path / "x"), "--speakers", "2", "--minutes", "1"])
    with pytest.raises(UserError, match="at least 3"):
        bad.func(bad)
