"""Distillation from speech alone (`distill --audio`): no motion data anywhere, the tiny teacher
makes every target from audio files, conditioned on given style vectors and the null style."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from conftest import assert_same_weights

from diffposetalk.errors import UserError


def _run(argv):
    from dpt_live.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)


def _speech(seconds: float, f0: float, sr: int, seed: int) -> np.ndarray:
    """Syllable-like bursts of harmonics with noise (stands in for speech)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = np.clip(np.sin(2 * np.pi * rng.uniform(2.5, 4.5) * t), 0, None) ** 2
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
    return (0.2 * env * tone + 0.01 * rng.normal(size=len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A speech folder (two speakers' sub-folders, 48 kHz stereo WAV and 16 kHz FLAC, one long file
    cut into segments, one too short to use), two style vectors, and the tiny teacher."""
    from tests.conftest import make_tiny_model_dir

    root = tmp_path_factory.mktemp("adistill")
    audio = root / "speech"
    (audio / "ann").mkdir(parents=True)
    (audio / "bob").mkdir()
    sf.write(audio / "ann" / "a1.wav", np.stack([_speech(2.2, 150, 48000, 0)] * 2, axis=1), 48000)
    sf.write(audio / "ann" / "a2.flac", _speech(3.2, 160, 16000, 1), 16000)
    sf.write(audio / "bob" / "long.flac", _speech(4.5, 110, 16000, 2), 16000)  # -> 2 s + 2 s (+ 0.5 s dropped)
    sf.write(audio / "bob" / "tiny.wav", _speech(0.4, 120, 16000, 3), 16000)  # too short: skipped
    (audio / "notes.txt").write_text("not audio")
    teacher = make_tiny_model_dir(root / "teacher", seed=1)
    from diffposetalk.model_dir import load_model_dir

    d = load_model_dir(teacher).config.d_style
    styles = root / "styles"
    styles.mkdir()
    rng = np.random.default_rng(4)
    for name in ("lively", "quiet"):
        np.save(styles / f"{name}.npy", rng.normal(size=d).astype(np.float32))
    base = ["distill", "--teacher", str(teacher), "--audio", str(audio), "--styles", str(styles),
            "--segment-seconds", "2", "--style-mix", "0.5", "--target-sets", "2", "--target-steps", "2",
            "--threads", "1", "--context-ms", "400", "--configs", "160/80,120/40", "--val-clips", "1",
            "--targets", str(root / "targets")]
    return {"root": root, "audio": audio, "styles": styles, "teacher": teacher, "base": base}


def test_speech_folder_is_read_cut_and_split(setup):
    from training.distill_audio import load_audio_clips, split_audio_clips

    clips = load_audio_clips(setup["audio"], 2.0)
    # a1: 2 s (+ a 0.2 s tail dropped); a2: 2 s + 1.2 s; long: 2 s + 2 s (+ 0.5 s dropped); tiny: skipped
    assert [c.entry for c in clips] == ["ann/a1", "ann/a2#0", "ann/a2#1", "bob/long#0", "bob/long#1"]
    assert [c.person for c in clips] == ["ann"] * 3 + ["bob"] * 2
    assert [len(c.audio) for c in clips] == [32000, 32000, 19200, 32000, 32000]  # 48 kHz stereo -> 16 kHz mono
    assert all(c.audio.dtype == np.float32 and c.audio.ndim == 1 for c in clips)
    train, val = split_audio_clips(clips, val_clips=1, train_clips=None)
    assert [c.entry for c in val] == ["bob/long#1"] and len(train) == 4
    assert len(split_audio_clips(clips, val_clips=3, train_clips=2)[0]) == 2


def test_audio_only_distillation_end_to_end_with_resume(setup):
    """Targets from speech alone (teacher offline generation, replayed by a real StreamSession),
    styles from --styles (and mixes, and the null style), a student trained on them, resumed."""
    from diffposetalk.model_dir import load_model_dir
    from training.distill_data import shard_name

    root, base = setup["root"], setup["base"]
    train = base + ["--batch", "8", "--val-every", "2", "--quiet", "--seed", "3", "--schedule", "constant"]
    straight = root / "straight"
    assert _run(train + ["-o", str(straight), "--iters", "4", "--save-every", "4"]) == 0
    shards = sorted((root / "targets").glob("*.npz"))
    assert len(shards) == 2 * 4 + 1  # 2 target sets x 4 train segments + 1 val segment
    metas = []
    for p in shards:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            metas.append(meta)
            teacher, style = z["teacher"], z["style"]
            assert np.isfinite(teacher).all() and len(z["first"]) > 0
            if meta["has_style"]:
                assert meta["style_from"] in ("lively", "quiet") or "*" in meta["style_from"]
                assert np.abs(style).sum() > 0
            else:
                assert meta["style_from"] is None and not style.any()
    assert {m["entry"] for m in metas if m["split"] == "val"} == {"bob/long#1"}
    # the draws cover given styles and the mean face (no GT shape exists)
    assert any(m["has_style"] for m in metas)
    from diffposetalk.model_dir import load_model_dir as _l

    t = _l(setup["teacher"])
    mean_face = ((0 - t.stats["shape_mean"]) / t.stats["shape_std"]).numpy()
    with np.load(root / "targets" / shard_name("train", 0, 0), allow_pickle=False) as z:
        np.testing.assert_allclose(z["shape"], mean_face, rtol=1e-6)

    # resume: 2 + 2 iterations equal 4 straight
    resumed = root / "resumed"
    assert _run(train + ["-o", str(resumed), "--iters", "2", "--save-every", "2"]) == 0
    assert _run(train + ["-o", str(resumed), "--iters", "4", "--save-every", "4", "--resume"]) == 0
    assert_same_weights(straight, resumed)
    a = load_model_dir(straight)
    with pytest.raises(UserError, match="different options"):
        _run(train + ["-o", str(resumed), "--iters", "6", "--resume", "--style-mix", "0.1"])
    recorded = json.loads((straight / "distill.json").read_text())["options"]
    assert recorded["audio"] == str(setup["audio"]) and recorded["data"] is None
    assert a.config.kind == "student" and set(a.styles) == {"calm"}  # the teacher's presets travel with it
    hist = json.loads((straight / "history.json").read_text())
    assert [h["step"] for h in hist] == [2, 4] and all(np.isfinite(h["val_loss"]) for h in hist)

    # the student streams
    from diffposetalk.model import Guidance
    from diffposetalk.sampler import make_sampler
    from streaming.factory import open_session
    from streaming.session import StreamConfig

    session = open_session(a, make_sampler("ddim", None, a.model), Guidance(), StreamConfig(),
                           style=np.load(setup["styles"] / "quiet.npy"))
    frames = session.feed(_speech(1.0, 140, 16000, 9)) + session.finish()
    assert len(frames) == 25 and all(np.isfinite(f.exp).all() for f in frames)


def test_style_draws():
    from training.distill_audio import draw_style, mixed_style

    names = ["a", "b", "c"]
    draws = [draw_style(1, s, i, names, 0.5) for s in range(2) for i in range(100)]
    assert draws == [draw_style(1, s, i, names, 0.5) for s in range(2) for i in range(100)]
    singles = [d for d in draws if len(d) == 1]
    mixes = [d for d in draws if len(d) == 2]
    assert 60 < len(singles) < 140 and {d[0][0] for d in singles} == set(names)
    assert all(d[0][0] != d[1][0] and abs(d[0][1] + d[1][1] - 1) < 1e-9 for d in mixes)
    assert all(len(draw_style(1, 0, i, names, 0.0)) == 1 for i in range(50))
    styles = {"a": np.ones(3, np.float32), "b": np.zeros(3, np.float32)}
    np.testing.assert_allclose(mixed_style(styles, [("a", 0.25), ("b", 0.75)]), 0.25)


def test_bad_inputs(setup, tmp_path):
    base = ["distill", "--teacher", str(setup["teacher"]), "-o", str(tmp_path / "o"), "--only-targets",
            "--targets", str(tmp_path / "t")]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no .wav/.flac"):
        _run(base + ["--audio", str(empty)])
    with pytest.raises(UserError, match="not a folder"):
        _run(base + ["--audio", str(tmp_path / "missing")])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.wav").write_bytes(b"RIFF....not a wave")
    with pytest.raises(UserError, match="cannot read audio"):
        _run(base + ["--audio", str(broken)])
    bad_styles = tmp_path / "bad_styles"
    bad_styles.mkdir()
    np.save(bad_styles / "wrong.npy", np.zeros(3, np.float32))
    with pytest.raises(UserError, match="shape"):
        _run(base + ["--audio", str(setup["audio"]), "--styles", str(bad_styles)])
    with pytest.raises(UserError, match="--styles goes with --audio"):
        _run(base + ["--data", str(tmp_path), "--styles", str(setup["styles"])])
    with pytest.raises(UserError, match="--style-mix"):
        _run(base + ["--audio", str(setup["audio"]), "--style-mix", "2"])
    with pytest.raises(SystemExit):  # argparse: --data and --audio exclude each other
        _run(base + ["--audio", str(setup["audio"]), "--data", str(tmp_path)])
