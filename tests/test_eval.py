"""Evaluation metrics on known inputs, and `eval` end to end on a tiny model."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest


def _stats():
    return {"exp_std": np.full(50, 2.0, np.float32), "pose_std": np.full(6, 0.5, np.float32)}


def test_perfect_prediction():
    from training.evaluate import head_pose_error_deg, lip_error, pearson

    rng = np.random.default_rng(0)
    gt = {"exp": rng.normal(size=(80, 50)), "pose": rng.normal(scale=0.1, size=(80, 6))}
    assert lip_error(gt, gt, _stats()) == 0.0
    assert pearson(gt["pose"][:, 3], gt["pose"][:, 3]) == pytest.approx(1.0)
    assert head_pose_error_deg(gt, gt) == 0.0


def test_known_errors():
    from training.evaluate import diversity, head_pose_error_deg, lip_error, pearson

    gt = {"exp": np.zeros((10, 50)), "pose": np.zeros((10, 6))}
    pred = {"exp": np.zeros((10, 50)), "pose": np.zeros((10, 6))}
    pred["exp"][:, :5] = 2.0  # one std on 5 of the 6 mouth coefficients
    assert lip_error(pred, gt, _stats()) == pytest.approx(np.sqrt(5 / 6))
    pred["exp"][:, 5:] = 100.0  # not mouth coefficients: no effect
    assert lip_error(pred, gt, _stats()) == pytest.approx(np.sqrt(5 / 6))
    pred["pose"][:, :3] = np.radians(2.0)
    assert head_pose_error_deg(pred, gt) == pytest.approx(2.0)
    x = np.arange(20.0)
    assert pearson(x, -3 * x + 1) == pytest.approx(-1.0)
    assert diversity(np.stack([np.zeros((5, 3)), np.ones((5, 3))])) == pytest.approx(1.0)


def test_retrieval_and_leave_one_out():
    from training.evaluate import retrieval_top1, speaker_styles

    gallery = {"a": np.array([1.0, 0]), "b": np.array([0, 1.0])}
    assert retrieval_top1([("a", np.array([2.0, 0.1])), ("b", np.array([0.1, 3.0]))], gallery) == 1.0
    assert retrieval_top1([("a", np.array([0.0, 1.0]))], gallery) == 0.0
    clips = {"a/000": ("a", np.array([1.0, 0])), "a/001": ("a", np.array([3.0, 0])),
             "b/000": ("b", np.array([0, 1.0]))}
    gal = speaker_styles(clips)
    np.testing.assert_allclose(gal["a/000"]["a"], [3.0, 0])  # the query clip is left out
    np.testing.assert_allclose(gal["b/000"]["a"], [2.0, 0])
    np.testing.assert_allclose(gal["b/000"]["b"], [0, 1.0])  # single clip: itself


def test_moments_retrieval_is_euclidean():
    """The encoder-free cross-check: mean and std per dimension, nearest by distance (cosine would
    call [2, 0] closest to [10, 0])."""
    from training.evaluate import motion_moments, retrieval_top1

    motion = np.array([[0.0, 1.0], [2.0, 1.0]])
    np.testing.assert_allclose(motion_moments(motion), [1.0, 1.0, 1.0, 0.0])
    gallery = {"near": np.array([1.0, 1.0]), "far": np.array([10.0, 0.0])}
    assert retrieval_top1([("near", np.array([2.0, 0.0]))], gallery, "euclidean") == 1.0
    assert retrieval_top1([("near", np.array([2.0, 0.0]))], gallery) == 0.0


def test_style_swap_tells_style_from_voice(monkeypatch):
    """--swap-styles counts which speaker a clip driven by another speaker's style is retrieved as:
    a model that follows the style scores (1, 0), one that reads the speaker off the voice (0, 1).
    The style encoder is replaced by the mean over frames to make the two models exact."""
    import types

    import torch

    from training import evaluate as ev

    monkeypatch.setattr(ev, "motion_style", lambda model, motion: motion.mean(0))
    rng = np.random.default_rng(0)
    people = {p: rng.normal(size=4) * 5 for p in ("a", "b", "c", "d")}
    clips = [types.SimpleNamespace(entry=f"{p}/{v:03d}", person=p, n_frames=120) for p in people for v in range(2)]
    clip_styles = {c.entry: (c.person, people[c.person] + rng.normal(size=4) * 0.1) for c in clips}
    galleries = ev.speaker_styles(clip_styles)

    def follows_style(c, n, style, seeds):
        return torch.from_numpy(np.tile(style.numpy(), (seeds, n, 1)))

    def reads_voice(c, n, style, seeds):
        return torch.from_numpy(np.tile(clip_styles[c.entry][1], (seeds, n, 1)))

    out = ev.style_swap(None, clips, clip_styles, galleries, 100, follows_style)
    assert out == {"clips": 8, "retrieved_as_style_speaker": 1.0, "retrieved_as_voice_speaker": 0.0}
    out = ev.style_swap(None, clips, clip_styles, galleries, 100, reads_voice)
    assert out == {"clips": 8, "retrieved_as_style_speaker": 0.0, "retrieved_as_voice_speaker": 1.0}
    lone = ev.style_swap(None, clips[:2], dict(list(clip_styles.items())[:2]), galleries, 100, follows_style)
    assert lone["clips"] == 0 and np.isnan(lone["retrieved_as_style_speaker"])


def test_eval_end_to_end(tmp_path):
    import torch

    from diffposetalk.archs import make_config
    from diffposetalk.model import DiffPoseTalk
    from diffposetalk.model_dir import save_model_dir
    from dpt_live.commands.evaluate import cmd_eval
    from tests.test_train import write_tiny_lmdb
    from training.train_data import load_stats_np

    data = write_tiny_lmdb(tmp_path / "lmdb", n_people=5, clips=2, frames=210)
    torch.manual_seed(0)
    cfg = make_config("tiny")
    model = save_model_dir(tmp_path / "m", cfg, DiffPoseTalk(cfg), load_stats_np(data))
    args = argparse.Namespace(model=model, data=data, split="test", json=tmp_path / "e.json", sampler="ddim",
                              steps=2, seeds=2, max_clips=None, max_seconds=None, cfg_audio=1.15,
                              cfg_style=3.0, flame=None, threads=1, device="cpu")
    assert cmd_eval(args) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    m = result["metrics"]
    assert result["clips"] == 2 and set(result["definitions"]) >= {"lip_error", "mouth_corr_mean", "diversity"}
    assert np.isfinite(m["lip_error"]) and m["diversity"] > 0
    assert 0.0 <= m["style_retrieval_gt"] <= 1.0
    assert 0.0 <= m["style_retrieval_moments_generated"] <= 1.0 and m["style_retrieval_moments_gt"] >= 0.0


def test_eval_presets_on_the_same_audio(tmp_path):
    """--presets: every preset drives the same clips; identical presets give identical motion
    (ratio exactly 1), different ones do not."""
    import torch

    from diffposetalk.archs import make_config
    from diffposetalk.model import DiffPoseTalk
    from diffposetalk.model_dir import save_model_dir
    from tests.test_train import write_tiny_lmdb
    from training.evaluate import EvalOptions, evaluate
    from training.train_data import load_stats_np

    data = write_tiny_lmdb(tmp_path / "lmdb", n_people=5, clips=2, frames=210)
    torch.manual_seed(0)
    cfg = make_config("tiny")
    net = DiffPoseTalk(cfg)
    rng = np.random.default_rng(1)
    a, b = (rng.normal(size=cfg.d_style).astype(np.float32) * 3 for _ in range(2))
    args = argparse.Namespace(data=data, split="test", sampler="ddim", steps=2, seeds=1, max_clips=None,
                              max_seconds=None, cfg_audio=1.15, cfg_style=3.0, flame=None, threads=1,
                              device="cpu", presets=1, swap_styles=True)
    same = save_model_dir(tmp_path / "same", cfg, net, load_stats_np(data), {"big_mouth": a, "small_mouth": a})
    pr = evaluate(EvalOptions(model=same, **vars(args)))["metrics"]["presets"]
    assert pr["clips"] == 1 and set(pr["per_preset"]) == {"big_mouth", "small_mouth"}
    assert pr["big_small_jaw_ratio"] == 1.0 and pr["jaw_std_ratio_max_min"] == 1.0
    diff = save_model_dir(tmp_path / "diff", cfg, net, load_stats_np(data), {"big_mouth": a, "small_mouth": b})
    pr = evaluate(EvalOptions(model=diff, **vars(args)))["metrics"]["presets"]
    ratio = pr["per_preset"]["big_mouth"]["jaw_std"] / pr["per_preset"]["small_mouth"]["jaw_std"]
    assert pr["big_small_jaw_ratio"] == pytest.approx(ratio) and ratio != 1.0
    assert pr["jaw_std_ratio_max_min"] == pytest.approx(max(ratio, 1 / ratio))
    args.split, args.presets = "train", 0  # 3 speakers (the test split has one: nothing to swap)
    swap = evaluate(EvalOptions(model=diff, **vars(args)))["metrics"]["style_swap"]
    assert swap["clips"] == 6 and 0.0 <= swap["retrieved_as_style_speaker"] <= 1.0


def test_probe_reports_x0_error_per_step(tmp_path):
    """dpt-live probe on a tiny model: one row per step; the rescaled-x_t reference is ~0 for a
    nearly clean x_t and grows with t (so the noising is the training one); bad steps refused."""
    import torch

    from diffposetalk.archs import make_config
    from diffposetalk.errors import UserError
    from diffposetalk.model import DiffPoseTalk
    from diffposetalk.model_dir import load_model_dir, save_model_dir
    from dpt_live.commands.evaluate import cmd_probe
    from tests.test_train import write_tiny_lmdb
    from training.probe import probe_denoiser
    from training.train_data import load_split, load_stats_np

    data = write_tiny_lmdb(tmp_path / "lmdb", n_people=5, clips=2, frames=210)
    torch.manual_seed(0)
    cfg = make_config("tiny")
    path = save_model_dir(tmp_path / "m", cfg, DiffPoseTalk(cfg), load_stats_np(data))
    loaded = load_model_dir(path)
    res = probe_denoiser(loaded, load_split(data, "train"), [1, 10, 19], 4, seed=0)
    copy = [r["rescaled_x_t_mse_all"] for r in res["per_step"]]
    assert [r["t"] for r in res["per_step"]] == [1, 10, 19]
    assert copy[0] < 1e-2 and copy[0] < copy[1] < copy[2]
    assert all(np.isfinite(r["x0_mse_all"]) for r in res["per_step"])
    assert res["sensitivity"]["t"] == 10 and res["sensitivity"]["new_x_t_noise"] > 0
    with pytest.raises(UserError, match="must be in 1..20"):
        probe_denoiser(loaded, load_split(data, "train"), [0, 25], 4, seed=0)
    out = tmp_path / "p.json"
    args = argparse.Namespace(model=path, data=data, split="val", windows=2, steps="1,5", seed=0, threads=1, json=out)
    assert cmd_probe(args) == 0 and len(json.loads(out.read_text())["per_step"]) == 2


def test_presets_from_dataset_speakers(tmp_path):
    """dpt-live presets: styles/NAME.npy = mean style over all the speaker's GT windows."""
    import torch

    from diffposetalk.archs import make_config
    from diffposetalk.errors import UserError
    from diffposetalk.model import DiffPoseTalk, coef_to_motion
    from diffposetalk.model_dir import load_model_dir, save_model_dir
    from dpt_live.cli import main
    from tests.test_train import write_tiny_lmdb
    from training.evaluate import gt_clip_styles
    from training.presets import parse_pairs, speaker_presets
    from training.train_data import load_split, load_stats_np

    data = write_tiny_lmdb(tmp_path / "lmdb", n_people=5, clips=2, frames=210)
    torch.manual_seed(0)
    cfg = make_config("tiny")
    path = save_model_dir(tmp_path / "m", cfg, DiffPoseTalk(cfg), load_stats_np(data))
    assert main(["presets", "--model", str(path), "--data", str(data), "calm=p0", "loud=p1"]) == 0
    loaded = load_model_dir(path)
    assert set(loaded.styles) == {"calm", "loud"}
    clips = load_split(data, "train")
    stats = {k: v.numpy() for k, v in loaded.stats.items()}
    gt = {c.entry: coef_to_motion(c.exp, c.pose, stats, cfg.head_pose).astype(np.float32) for c in clips}
    per_clip = gt_clip_styles(loaded.model, clips, gt)  # equal-length clips: mean of clip means
    expected = np.mean([s for p, s in per_clip.values() if p == "p0"], axis=0)
    np.testing.assert_allclose(loaded.styles["calm"], expected, atol=1e-5)
    assert not np.allclose(loaded.styles["calm"], loaded.styles["loud"])
    with pytest.raises(UserError, match="NAME=SPEAKER"):
        parse_pairs(["calm"])
    with pytest.raises(UserError, match="no clip"):
        speaker_presets(loaded, clips, {"x": "p4"})  # p4 is a val speaker
