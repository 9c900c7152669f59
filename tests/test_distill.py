"""Distillation on tiny models: the recorded streaming inputs, the student's guidance input, the
losses going down, the CLI's checkpoints, resume and the student in the streaming engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_same_weights

from diffposetalk.errors import UserError


def _run(argv):
    from dpt_live.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny lmdb (p0, p1 train; p2 val; p3 test), a tiny teacher and its targets (built once)."""
    from diffposetalk.archs import make_config
    from diffposetalk.model import DiffPoseTalk
    from diffposetalk.model_dir import save_model_dir
    from tests.test_train import write_tiny_lmdb
    from training.train_data import load_stats_np

    root = tmp_path_factory.mktemp("distill")
    data = write_tiny_lmdb(root / "lmdb", n_people=4, clips=2, frames=104)
    torch.manual_seed(0)
    cfg = make_config("tiny")
    rng = np.random.default_rng(0)
    teacher = save_model_dir(root / "teacher", cfg, DiffPoseTalk(cfg), load_stats_np(data),
                             {"calm": rng.normal(size=cfg.d_style).astype(np.float32)})
    targets = root / "targets"
    base = ["distill", "--teacher", str(teacher), "--data", str(data), "--targets", str(targets),
            "--target-sets", "1", "--target-steps", "2", "--threads", "1", "--context-ms", "400",
            "--configs", "160/80,160/0,120/40", "--val-clips", "1"]
    assert _run(base + ["-o", str(root / "unused"), "--only-targets"]) == 0
    return {"root": root, "data": data, "teacher": teacher, "targets": targets, "base": base}


def _teacher(setup):
    from diffposetalk.model_dir import load_model_dir

    return load_model_dir(setup["teacher"])


# --- recorded streaming inputs ------------------------------------------------------------------

def test_recording_engine_gives_the_live_inputs(setup):
    """The inputs stored for the student are what a live session hands a student model, and the
    session replays the teacher's frames (teacher forcing, seam blend included)."""
    from diffposetalk.model import Guidance
    from diffposetalk.sampler import DDIMSampler
    from streaming.factory import open_session
    from streaming.motion import SamplingMotionEngine
    from streaming.session import StreamConfig
    from training.distill import make_student
    from training.distill_data import record_stream
    from training.train_data import load_split

    teacher = _teacher(setup)
    clip = load_split(setup["data"], "train")[0]
    T, D = clip.n_frames, teacher.config.motion_dim
    target = np.random.default_rng(1).normal(size=(T, D)).astype(np.float32)
    rec = record_stream(teacher, clip.audio, target, 8, 80, 80, 400, teacher.styles["calm"])
    hop, n_real = 2, 4
    S = len(rec["first"])
    assert rec["audio_feat"].shape == (S, 8, teacher.config.feature_dim)
    np.testing.assert_array_equal(rec["first"], np.arange(S) * hop)
    assert S == -(-T // hop)
    np.testing.assert_allclose(rec["emitted"], target, atol=1e-5)  # every frame, in order
    # indicator: hop + lookahead real frames, fewer at the end of the clip, padding after
    assert (rec["indicator"][:-3].sum(1) == n_real).all() and rec["indicator"][-1].sum() < n_real
    assert all(ind[:int(ind.sum())].all() for ind in rec["indicator"])
    # continuation from emitted (= teacher) frames after the learned start condition
    np.testing.assert_allclose(rec["prev_motion"][0], teacher.model.start_motion_feat[0].detach().numpy())
    k = 10  # first = 20: the previous 10 frames are all teacher frames
    np.testing.assert_allclose(rec["prev_motion"][k], target[20 - 10:20], atol=1e-5)

    # a live session with a student: same audio features, indicator and previous audio every step
    _, student = make_student(teacher, 8, 1)
    seen = []

    class Spy(SamplingMotionEngine):
        def sample(self, audio_feat, indicator, prev_motion, prev_audio, style, step):
            seen.append((audio_feat.copy(), indicator.copy(), prev_audio.copy()))
            return super().sample(audio_feat, indicator, prev_motion, prev_audio, style, step)

    import streaming.factory as factory
    teacher.model = student
    teacher.config = student.cfg
    orig = factory.SamplingMotionEngine
    factory.SamplingMotionEngine = Spy
    try:
        session = open_session(teacher, DDIMSampler(1), Guidance(), StreamConfig(80, 80, 400), style=teacher.styles["calm"],
                               shape_raw=torch.from_numpy(clip.shape))
        session.feed(clip.audio)
        session.finish()
    finally:
        factory.SamplingMotionEngine = orig
    assert len(seen) == S
    for s, (a, ind, pa) in enumerate(seen):
        np.testing.assert_allclose(a, rec["audio_feat"][s], atol=1e-5)
        np.testing.assert_array_equal(ind, rec["indicator"][s])
        np.testing.assert_allclose(pa, rec["prev_audio"][s], atol=1e-5)


def test_stream_encoder_targets_record_what_a_live_session_with_it_feeds(setup, tmp_path):
    """--stream-encoder: the student's recorded audio features are those a live session using that
    model's streaming encoder hands its motion engine (same hop, lookahead, normaliser, gate);
    shards say which features they hold and a run refuses targets of the other kind."""
    from conftest import make_tiny_model_dir

    from diffposetalk.model import Guidance
    from diffposetalk.model_dir import load_model_dir
    from diffposetalk.sampler import DDIMSampler
    from diffposetalk.stream_encoder import tiny_stream_config
    from streaming.factory import open_session
    from streaming.motion import SamplingMotionEngine
    from streaming.session import StreamConfig
    from training.distill_data import DistillSet, record_stream
    from training.train_data import load_split

    teacher = _teacher(setup)
    F = teacher.config.feature_dim
    enc_dir = make_tiny_model_dir(tmp_path / "enc", seed=3, kind="student", student_steps=1, n_motions=8,
                                  stream_encoder=tiny_stream_config(F).to_dict())
    enc = load_model_dir(enc_dir)
    clip = load_split(setup["data"], "train")[0]
    target = np.zeros((clip.n_frames, teacher.config.motion_dim), np.float32)
    rec = record_stream(teacher, clip.audio, target, 8, 80, 80, 400, None, encoder=enc.model)
    window = record_stream(teacher, clip.audio, target, 8, 80, 80, 400, None)
    assert not np.allclose(rec["audio_feat"], window["audio_feat"], atol=1e-3)  # not the teacher's window

    seen = []

    class Spy(SamplingMotionEngine):
        def sample(self, audio_feat, indicator, prev_motion, prev_audio, style, step):
            seen.append((audio_feat.copy(), prev_audio.copy()))
            return super().sample(audio_feat, indicator, prev_motion, prev_audio, style, step)

    import streaming.factory as factory
    orig = factory.SamplingMotionEngine
    factory.SamplingMotionEngine = Spy
    try:
        session = open_session(enc, DDIMSampler(1), Guidance(), StreamConfig(80, 80, 400))
        assert session.audio_encoder == "stream"
        session.feed(clip.audio)
        session.finish()
    finally:
        factory.SamplingMotionEngine = orig
    assert len(seen) == len(rec["first"])
    for s, (a, _) in enumerate(seen):
        np.testing.assert_allclose(a, rec["audio_feat"][s], atol=1e-5)

    # the CLI: shards of stream features, and no mixing with the window kind
    targets = tmp_path / "targets"
    base = setup["base"][:setup["base"].index("--targets")] + ["--targets", str(targets)] + \
        setup["base"][setup["base"].index("--targets") + 2:]
    assert _run(base + ["-o", str(tmp_path / "unused"), "--only-targets", "--train-clips", "1",
                        "--stream-encoder", str(enc_dir)]) == 0
    assert DistillSet(sorted(targets.glob("train_set*.npz")), 8).features == "stream"
    with pytest.raises(UserError, match="stream audio features"):
        _run(base + ["-o", str(tmp_path / "s"), "--no-build", "--iters", "1", "--batch", "4", "--quiet"])
    with pytest.raises(UserError, match="window audio features"):
        _run(setup["base"] + ["-o", str(tmp_path / "s2"), "--no-build", "--iters", "1", "--batch", "4", "--quiet",
                              "--stream-encoder", str(enc_dir)])
    with pytest.raises(UserError, match="no streaming audio encoder"):
        _run(base + ["-o", str(tmp_path / "s3"), "--only-targets", "--stream-encoder", str(setup["teacher"])])
    assert _run(base + ["-o", str(tmp_path / "s4"), "--no-build", "--iters", "1", "--batch", "4", "--quiet",
                        "--stream-encoder", str(enc_dir), "--init", str(enc_dir)]) == 0
    assert load_model_dir(tmp_path / "s4").config.stream_encoder is not None  # the student keeps its encoder


def test_shards_pair_noise_and_targets(setup):
    from training.distill_data import DistillSet

    paths = sorted(setup["targets"].glob("train_set0_*.npz"))
    assert len(paths) == 4
    ds = DistillSet(paths, 8)
    with np.load(paths[0]) as z:
        teacher, x_T, first = z["teacher"], z["x_T"], z["first"]
        meta = json.loads(str(z["meta"]))
    i = 7  # a step of shard 0
    f = first[i]
    np.testing.assert_allclose(ds.target[i], teacher[f:f + 8])
    np.testing.assert_allclose(ds.noise[i], x_T[(f + np.arange(8)) % len(x_T)])
    assert meta["teacher_steps"] == 2 and len(x_T) == 100
    # the window configurations cycle over the clips
    assert set(ds.describe()["configs"]) == {"160/80/400", "160/0/400", "120/40/400"}


def test_context_mix_replaces_the_previous_frames(setup, tmp_path):
    """--context-mix: a decorrelated step's previous frames are the other target set's frames of
    the same clip window (shifted onto the recorded last frame, amplitude-scaled); p=0 changes
    nothing; the window's own inputs and targets stay."""
    import shutil

    from training.distill_data import DistillSet

    targets = tmp_path / "targets"
    shutil.copytree(setup["targets"], targets)
    base = [a if a != str(setup["targets"]) else str(targets) for a in setup["base"]]
    base[base.index("--target-sets") + 1] = "2"
    assert _run(base + ["-o", str(tmp_path / "unused"), "--only-targets", "--target-set", "1"]) == 0
    paths = sorted(targets.glob("train_set*_0000.npz"))
    assert [p.name for p in paths] == ["train_set0_0000.npz", "train_set1_0000.npz"]
    ds = DistillSet(paths, 8)
    P = ds.cols["prev_motion"].shape[1]
    rows = np.nonzero((ds.cols["shard"] == 0) & (ds.cols["first"] >= P))[0]
    assert len(rows) > 2
    i = rows[1]
    f = ds.cols["first"][i]
    other = ds.shards[1]["teacher"]
    own = ds.cols["prev_motion"][i]
    expect = other[f - P:f] - other[f - 1] + own[-1]
    np.testing.assert_allclose(ds.alt_prev[i], expect, rtol=1e-5, atol=1e-5)
    assert np.abs(ds.alt_prev[i] - own).max() > 1e-3  # another draw: a different context
    idx = np.array([i, i, i])
    same = ds.decorrelate(idx, np.random.default_rng(0), 0.0)
    np.testing.assert_array_equal(same, ds.cols["prev_motion"][idx])
    mixed = ds.decorrelate(idx, np.random.default_rng(0), 1.0)
    np.testing.assert_allclose(mixed[:, -1], np.repeat(own[-1:], 3, 0), atol=1e-6)  # continuity kept
    dev, alt_dev = mixed[0] - own[-1], ds.alt_prev[i] - own[-1]
    k = np.argmax(np.abs(alt_dev))
    ratio = dev.flat[k] / alt_dev.flat[k]
    assert 0.5 <= ratio <= 2.0
    np.testing.assert_allclose(dev, ratio * alt_dev, rtol=1e-4, atol=1e-5)
    b = ds.batch(idx, "cpu", mixed)
    assert torch.equal(b.prev_motion, torch.from_numpy(mixed))
    np.testing.assert_array_equal(b.target.numpy(), ds.target[idx])
    with pytest.raises(UserError, match="--context-mix"):
        _run(base + ["-o", str(tmp_path / "bad"), "--no-build", "--context-mix", "1.5"])


def test_draws_are_deterministic_and_cover_the_ranges():
    from training.distill_data import draw_target

    draws = [draw_target(1, s, i) for s in range(2) for i in range(200)]
    assert draws[5] == draw_target(1, 0, 5)
    no_style = [d for d in draws if not d.has_style]
    assert 0.05 < len(no_style) / len(draws) < 0.3 and all(d.w_style == 0 for d in no_style)
    styled = [d for d in draws if d.has_style]
    assert all(1.0 <= d.w_audio <= 2.0 and 1.0 <= d.w_style <= 4.0 for d in styled)
    assert any(d.w_audio == 1.15 and d.w_style == 3.0 for d in styled)


def test_style_swap_conditions_on_another_speaker(setup, tmp_path):
    """--style-swap: a target may carry another speaker's style (deterministically), so the student
    cannot read the style off the voice; the shard says whose style it holds."""
    from training.distill_data import build_shards, style_donor
    from training.train_data import load_split

    clips = load_split(setup["data"], "train")  # p0 x2, p1 x2
    donors = [style_donor(3, s, i, clips, 0.5) for s in range(30) for i in range(len(clips))]
    assert donors == [style_donor(3, s, i, clips, 0.5) for s in range(30) for i in range(len(clips))]
    swapped = [(i % len(clips), d) for i, d in enumerate(donors) if d is not None]
    assert 0.3 < len(swapped) / len(donors) < 0.7
    assert all(clips[d].person != clips[i].person for i, d in swapped)
    assert all(style_donor(3, s, 0, clips, 0.0) is None for s in range(30))

    paths = build_shards(_teacher(setup), setup["data"], "train", tmp_path, [0, 1], 8, 2, seed=3,
                         configs=((160, 80),), context_ms=400, style_swap=1.0)
    metas = []
    for path in paths:
        with np.load(path) as z:
            metas.append(json.loads(str(z["meta"])))
    styled = [m for m in metas if m["has_style"]]
    assert len(paths) == 8 and styled  # 2 sets x 4 clips
    assert all(m["style_from"] != m["entry"] and m["style_from"].split("/")[0] != m["person"] for m in styled)


def test_style_mix_conditions_on_a_mix_with_another_speaker(setup, tmp_path):
    """--style-mix with --data: some targets are conditioned on w x own style + (1 - w) x another
    speaker's, deterministically, and the shard says which mix it holds."""
    from training.distill_data import build_shards, split_styles, style_partner
    from training.train_data import load_split

    clips = load_split(setup["data"], "train")
    draws = [style_partner(3, s, i, clips, 0.5) for s in range(30) for i in range(len(clips))]
    assert draws == [style_partner(3, s, i, clips, 0.5) for s in range(30) for i in range(len(clips))]
    mixed = [(i % len(clips), d) for i, d in enumerate(draws) if d is not None]
    assert 0.3 < len(mixed) / len(draws) < 0.7
    assert all(clips[j].person != clips[i].person and 0.2 <= w <= 0.8 for i, (j, w) in mixed)
    assert all(style_partner(3, s, 0, clips, 0.0) is None for s in range(30))

    teacher = _teacher(setup)
    paths = build_shards(teacher, setup["data"], "train", tmp_path, [0, 1], 8, 2, seed=3,
                         configs=((160, 80),), context_ms=400, style_mix=1.0)
    stats = {k: v.cpu().numpy() for k, v in teacher.stats.items()}
    own = split_styles(teacher, clips, stats)
    n_mixed = 0
    for path in paths:
        with np.load(path) as z:
            meta, style = json.loads(str(z["meta"])), z["style"]
        if not meta["has_style"]:
            continue
        a, b = meta["style_from"].split("+")
        (ea, wa), (eb, wb) = a.split("*"), b.split("*")
        assert ea == meta["entry"] and eb.split("/")[0] != meta["person"]
        np.testing.assert_allclose(style, float(wa) * own[ea] + float(wb) * own[eb], atol=1e-2)
        n_mixed += 1
    assert n_mixed


def test_pad_silence_adds_long_pauses_to_the_targets(setup, tmp_path):
    """--pad-silence S: the teacher generates (and the session records) each clip with S seconds of
    digital silence before and after it; the shard says so."""
    from training.distill_data import build_shards
    from training.train_data import load_split

    clip = load_split(setup["data"], "train")[0]
    (path, *_) = build_shards(_teacher(setup), setup["data"], "train", tmp_path, [0], 8, 2, seed=3,
                              configs=((160, 80),), context_ms=400, pad_s=1.0)
    with np.load(path) as z:
        meta, teacher, first = json.loads(str(z["meta"])), z["teacher"], z["first"]
    assert meta["pad_s"] == 1.0 and meta["entry"] == clip.entry
    assert len(teacher) == clip.n_frames + 50 and first[-1] + 4 >= len(teacher)


# --- the student ----------------------------------------------------------------------------------

def test_student_guidance_inputs(setup):
    """Different scales give different outputs; no style means w_style 0 (not the given scale)."""
    from diffposetalk.model import Guidance, WindowCondition
    from training.distill import make_student

    teacher = _teacher(setup)
    cfg, student = make_student(teacher, 8, 1)
    assert cfg.kind == "student" and cfg.student_steps == 1 and cfg.n_motions == 8
    # starts as the teacher's plain conditional pass: zero guidance embedding
    torch.manual_seed(0)
    F, D = cfg.feature_dim, cfg.motion_dim
    cond = WindowCondition(torch.randn(1, 8, F), torch.randn(1, 100), torch.randn(1, cfg.d_style),
                           indicator=torch.ones(1, 8))
    x = torch.randn(1, 8, D)
    with torch.no_grad():
        a = student.guided_x0(x, 20, cond, Guidance(scales={"audio": 1.0, "style": 1.0}))
        b = student.guided_x0(x, 20, cond, Guidance(scales={"audio": 2.0, "style": 4.0}))
        assert torch.allclose(a, b)
        torch.nn.init.normal_(student.denoising_net.guidance_map[2].weight)
        a = student.guided_x0(x, 20, cond, Guidance(scales={"audio": 1.0, "style": 1.0}))
        b = student.guided_x0(x, 20, cond, Guidance(scales={"audio": 2.0, "style": 4.0}))
        assert not torch.allclose(a, b)
        no_style = WindowCondition(cond.audio_feat, cond.shape, None, indicator=cond.indicator)
        g = student.student_guidance(no_style, Guidance(scales={"audio": 1.5, "style": 3.0}), 1)
        assert g.tolist() == [[1.5, 0.0]]


@pytest.mark.parametrize("steps", [1, 2])
def test_distillation_loss_decreases(setup, steps):
    from training.distill import make_student, trainable
    from training.distill_data import DistillSet
    from training.distill_losses import dim_weights, unrolled

    ds = DistillSet(sorted(setup["targets"].glob("train_set0_*.npz")), 8)
    cfg, student = make_student(_teacher(setup), 8, steps)
    params = trainable(student)
    opt = torch.optim.Adam(params, lr=3e-3)
    b = ds.batch(np.arange(0, len(ds), 4)[:48], "cpu")
    w = dim_weights(cfg.motion_dim, cfg.head_pose, 2.0)
    first = None
    for _ in range(25):
        loss, terms, per_step, _ = unrolled(student, b, steps, w, 5.0)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert len(per_step) == steps
    assert float(unrolled(student, b, steps, w, 5.0)[0].detach()) < 0.7 * first
    # the frozen parts did not move
    assert all(not p.requires_grad for p in student.audio_encoder.parameters())


def test_losses_on_known_inputs():
    from training.distill_losses import dim_weights, student_losses

    target = torch.zeros(1, 4, 54)
    pred = target.clone()
    pred[0, 1, 0] = 2.0  # one mouth value off by 2 in frame 1 (real)
    pred[0, 3, 0] = 100.0  # frame 3 is padding: ignored
    mask = torch.tensor([[1, 1, 1, 0]])
    w = dim_weights(54, True, 1.0)
    t = student_losses(pred, target, mask, w)
    assert t["coef"].item() == pytest.approx(4 / (3 * 54))
    assert t["vel"].item() == pytest.approx(8 / (3 * 54))  # +2 into frame 1, -2 out of it
    assert t["lip"].item() == pytest.approx(4 / (3 * 6))
    heavier = student_losses(pred, target, mask, dim_weights(54, True, 3.0))
    assert heavier["coef"] > t["coef"]


# --- the command -------------------------------------------------------------------------------

def test_cli_checkpoint_resume_and_student_in_the_engines(setup):
    from diffposetalk.generate import generate_motion
    from diffposetalk.model import Guidance
    from diffposetalk.model_dir import load_model_dir
    from diffposetalk.sampler import DDIMSampler, make_sampler
    from streaming.factory import open_session
    from streaming.session import StreamConfig

    root, base = setup["root"], setup["base"] + ["--batch", "8", "--val-every", "2", "--quiet", "--seed", "5"]
    base += ["--schedule", "constant"]  # the cosine schedule depends on --iters
    straight = root / "s_straight"
    assert _run(base + ["-o", str(straight), "--iters", "4", "--save-every", "4", "--no-build"]) == 0
    # resume: a run stopped after 2 of 4 iterations and resumed equals the straight run
    resumed = root / "s_resumed"
    assert _run(base + ["-o", str(resumed), "--iters", "2", "--save-every", "2"]) == 0
    with pytest.raises(UserError, match="not empty"):
        _run(base + ["-o", str(resumed), "--iters", "4"])
    assert _run(base + ["-o", str(resumed), "--iters", "4", "--save-every", "4", "--resume"]) == 0
    assert_same_weights(straight, resumed)
    with pytest.raises(UserError, match="different options"):
        _run(base + ["-o", str(resumed), "--iters", "6", "--resume", "--vel-weight", "1"])
    a = load_model_dir(straight)

    hist = json.loads((straight / "history.json").read_text())
    assert [h["step"] for h in hist] == [2, 4] and all(np.isfinite(h["val_loss"]) for h in hist)
    assert a.config.kind == "student" and a.config.student_steps == 2 and a.config.n_motions == 8
    assert set(a.styles) == {"calm"}

    # the streaming engine and offline generation run the student (its own steps by default)
    sampler = make_sampler("ddim", None, a.model)
    assert sampler.timesteps(a.model) == [20, 10]
    assert sampler.passes_per_window(a.model, Guidance(), has_style=True) == 2
    session = open_session(a, sampler, Guidance(), StreamConfig(), style=a.styles["calm"])
    audio = np.random.default_rng(0).uniform(-0.3, 0.3, 16000).astype(np.float32)
    frames = session.feed(audio) + session.finish()
    assert len(frames) == 25 and all(np.isfinite(f.exp).all() for f in frames)
    off = generate_motion(a.model, audio, torch.zeros(100), None, DDIMSampler(2), Guidance())
    assert off.shape == (1, 25, a.config.motion_dim)

    # eval --stream measures the student with the same metric code
    out = root / "eval.json"
    assert _run(["eval", "--model", str(straight), "--data", str(setup["data"]), "--split", "test",
                 "--stream", "--seeds", "2", "--threads", "1", "--max-clips", "1", "--context-ms", "400", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    m = res["metrics"]
    assert res["mode"] == "stream" and res["steps"] == 2 and res["kind"] == "student"
    assert np.isfinite(m["lip_error"]) and m["diversity"] > 0
    # the default window: one frame per step (40 ms hop, one regenerated), 2 passes per step
    assert res["window"] == {"hop_ms": 40, "lookahead_ms": 80, "context_ms": 400, "regen_ms": 40,
                             "audio_encoder": "window"}
    assert m["network_passes_per_audio_second"] == pytest.approx(2 * 25, rel=0.05)


def test_bad_arguments(setup):
    from training.distill import parse_configs

    assert parse_configs("80/80, 160/80", 8) == ((80, 80), (160, 80))
    with pytest.raises(UserError, match="exceeds the student window"):
        parse_configs("200/200", 8)
    with pytest.raises(UserError, match="multiple of 40"):
        parse_configs("50/80", 8)
    with pytest.raises(UserError, match="HOP/LOOKAHEAD"):
        parse_configs("80", 8)
    with pytest.raises(UserError, match="--only-targets"):
        _run(setup["base"] + ["-o", str(setup["root"] / "x"), "--target-set", "0"])


def test_bundled_demo_student_is_the_stream_default():
    """models/demo-student: a 1-step student with the teacher's presets, small enough to bundle,
    and what `stream` / `serve` load when --model is not given."""
    from diffposetalk.model_dir import load_model_dir
    from diffposetalk.paths import DEFAULT_STREAM_MODEL
    from dpt_live.cli import build_parser

    assert DEFAULT_STREAM_MODEL.name == "demo-student"
    total = sum(f.stat().st_size for d in ("demo", "demo-student")
                for f in (DEFAULT_STREAM_MODEL.parent / d).rglob("*.safetensors"))
    assert (DEFAULT_STREAM_MODEL / "weights.safetensors").stat().st_size <= 8_000_000 and total <= 20_000_000
    loaded = load_model_dir(DEFAULT_STREAM_MODEL)
    assert loaded.config.kind == "student" and loaded.config.student_steps == 1
    assert set(loaded.styles) == {"calm", "animated", "big_mouth", "small_mouth"}
    args = build_parser().parse_args(["stream", "--audio", "x.wav", "-o", "y.npz"])
    assert args.model == DEFAULT_STREAM_MODEL


def test_animate_picks_ddim_for_a_student(tmp_path, speech_like_wav):
    """A student runs only under DDIM: `animate` picks it without --sampler (ddpm is refused by name)."""
    from dpt_live.cli import main
    from tests.conftest import make_tiny_model_dir

    student = make_tiny_model_dir(tmp_path / "student", kind="student", student_steps=1)
    out = tmp_path / "s.npz"
    assert main(["animate", "--model", str(student), "--audio", str(speech_like_wav), "-o", str(out)]) == 0
    assert np.load(out)["exp"].shape[1] == 50
    assert main(["animate", "--model", str(student), "--audio", str(speech_like_wav), "--sampler", "ddpm",
                 "-o", str(out)]) == 2


def test_fewer_previous_frames(setup):
    """--n-prev 4: the student keeps the teacher's last previous-frame positions and start vectors,
    trains on the last 4 recorded previous frames, and streams the same in PyTorch and ONNX Runtime."""
    from diffposetalk.model import Guidance
    from diffposetalk.model_dir import load_model_dir
    from diffposetalk.sampler import DDIMSampler
    from engines.networks import backend_unavailable
    from streaming.factory import build_session
    from streaming.runner import stream_array
    from streaming.session import StreamConfig
    from training.distill import make_student
    from training.distill_data import DistillSet

    teacher = _teacher(setup)
    cfg, student = make_student(teacher, 8, 1, n_prev=4)
    assert cfg.n_prev_motions == 4 and cfg.seq_len == 12
    t_state, s_state = teacher.model.state_dict(), student.state_dict()
    torch.testing.assert_close(s_state["denoising_net.PE"][:, 0], t_state["denoising_net.PE"][:, 0])
    torch.testing.assert_close(s_state["denoising_net.PE"][:, 1:], t_state["denoising_net.PE"][:, 7:19])
    torch.testing.assert_close(s_state["start_motion_feat"], t_state["start_motion_feat"][:, 6:])
    with pytest.raises(UserError, match="--n-prev 11"):
        make_student(teacher, 8, 1, n_prev=11)

    paths = sorted(setup["targets"].glob("train_set0_*.npz"))
    full, four = DistillSet(paths, 8), DistillSet(paths, 8, 4)
    np.testing.assert_array_equal(four.cols["prev_motion"], full.cols["prev_motion"][:, 6:])
    np.testing.assert_array_equal(four.cols["prev_audio"], full.cols["prev_audio"][:, 6:])

    out = setup["root"] / "s_prev4"
    argv = setup["base"] + ["--batch", "8", "--quiet", "--no-build", "--steps", "1", "--iters", "3",
                            "--val-every", "3", "--save-every", "3", "--n-prev", "4", "-o", str(out)]
    assert _run(argv) == 0
    a = load_model_dir(out)
    assert a.config.n_prev_motions == 4 and a.model.start_audio_feat.shape[1] == 4
    with pytest.raises(UserError, match="not this run's student"):
        _run(argv[:-4] + ["--n-prev", "6", "-o", str(out), "--iters", "4", "--resume"])

    audio = np.random.default_rng(3).uniform(-0.3, 0.3, 24000).astype(np.float32)
    motions = {}
    for backend in ("torch", "onnxruntime"):
        if backend_unavailable(backend) is not None:
            continue
        session = build_session(a, DDIMSampler(1), Guidance(), StreamConfig(80, 80, 400), a.styles["calm"],
                                backend=backend)
        motions[backend] = np.stack([f.motion for f in stream_array(session, audio, 320)])
    assert motions["torch"].shape[0] == 37 and np.isfinite(motions["torch"]).all()
    if "onnxruntime" in motions:
        assert np.abs(motions["onnxruntime"] - motions["torch"]).max() < 1e-3


def test_rollouts_continue_from_the_students_own_frames(setup):
    """--rollout: K consecutive steps of one clip, each after the first continuing from the frames
    the student emitted itself; the losses are finite and training with them runs."""
    from training.distill import make_student
    from training.distill_data import DistillSet
    from training.distill_losses import dim_weights, unrolled
    from training.distill_rollout import Rollouts, rollout_losses

    ds = DistillSet(sorted(setup["targets"].glob("train_set0_*.npz")), 8)
    ro = Rollouts(ds, 100)
    assert ro.hop == 4 and ro.K == 25  # 160 ms hops are the most common in these targets
    rows = ro.draw(np.random.default_rng(0), 3)
    assert rows.shape == (3, 25)
    assert (np.diff(ds.cols["shard"][rows], axis=1) == 0).all()
    assert (np.diff(ds.cols["first"][rows], axis=1) == ro.hop).all()

    cfg, student = make_student(_teacher(setup), 8, 1)
    w = dim_weights(cfg.motion_dim, cfg.head_pose, 1.0)
    with torch.no_grad():
        r = rollout_losses(student, ds, rows[:, :2], ro.hop, 1, w, "cpu")
        # by hand: step 0 from the recorded frames, step 1 from step 0's emitted frames
        b0 = ds.batch(rows[:, 0], "cpu")
        x0 = unrolled(student, b0, 1, w, 0.0)[3]
        b1 = ds.batch(rows[:, 1], "cpu")
        forced = unrolled(student, b1, 1, w, 0.0)[2][0]
        b1.prev_motion = torch.cat([b0.prev_motion, x0[:, :4]], dim=1)[:, -cfg.n_prev_motions:]
        free = unrolled(student, b1, 1, w, 0.0)[2][0]
    c0 = unrolled(student, b0, 1, w, 0.0)[2][0]
    torch.testing.assert_close(r["coef"], (c0 + free) / 2)
    assert not torch.isclose(free, forced)
    assert all(torch.isfinite(v) for v in r.values()) and 0 <= float(r["style"]) <= 2

    out = setup["root"] / "s_rollout"
    assert _run(setup["base"] + ["--batch", "8", "--quiet", "--no-build", "--steps", "1", "--iters", "2",
                                 "--val-every", "2", "--save-every", "2", "--rollout", "2", "-o", str(out)]) == 0
    hist = json.loads((out / "history.json").read_text())
    assert np.isfinite(hist[-1]["val_rollout_style"]) and hist[-1]["val_rollout_coef"] > 0
    with pytest.raises(UserError, match="--rollout"):
        _run(setup["base"] + ["-o", str(setup["root"] / "bad"), "--rollout", "-1"])
