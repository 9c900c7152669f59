"""Trainers on a tiny lmdb: losses, masks, condition dropout, resume determinism, errors."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from diffposetalk.errors import UserError


def write_tiny_lmdb(path, n_people=6, clips=2, frames=260, seed=0):
    """p0..p3 train, p4 val, p5 test; jaw and mouth follow the audio envelope."""
    from training.tfhp_writer import TfhpWriter

    rng = np.random.default_rng(seed)
    with TfhpWriter(path, map_size=1 << 27) as w:
        for p in range(n_people):
            split = "train" if p < n_people - 2 else ("val" if p == n_people - 2 else "test")
            amp = 0.5 + p
            for v in range(clips):
                env = np.abs(np.sin(np.arange(frames) / 7.0 + p + v))
                exp = rng.normal(scale=0.1, size=(frames, 50)).astype(np.float32)
                exp[:, :5] += amp * env[:, None]
                pose = rng.normal(scale=0.01, size=(frames, 6)).astype(np.float32)
                pose[:, 3] = 0.1 * amp * env
                shape = np.repeat(rng.normal(size=(1, 100)), frames, 0).astype(np.float32)
                audio = (np.repeat(env, 640) * rng.uniform(-0.5, 0.5, frames * 640)).astype(np.float32)
                w.add_clip(f"p{p}", v, split, exp, pose, shape, audio)
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_lmdb(tmp_path_factory.mktemp("tfhp") / "lmdb")


def train_args(**kw):
    base = dict(iters=2, batch=2, lr=1e-3, warmup=1, schedule="constant", clip=1.0, seed=3, device="cpu",
                threads=1, resume=False, val_every=100, save_every=100, quiet=True, arch="tiny",
                temperature=0.1, no_head_pose=False, freeze_audio="none", flame=None, val_batches=1,
                dropout=None, init=None, snr_gamma=0.0, style_loss=0.0, std_loss=0.0)
    base.update(kw)
    return argparse.Namespace(**base)


def style_options(**kw):
    """train_args as `train style-encoder` hands them to the trainer."""
    from dpt_live.commands.arguments import options_from
    from training.train_style import StyleEncoderOptions

    args = train_args(**kw)
    return options_from(args, StyleEncoderOptions, head_pose=not args.no_head_pose)


def denoiser_options(**kw):
    """train_args as `train denoiser` hands them to the trainer."""
    from dpt_live.commands.arguments import options_from
    from training.train_denoiser import DenoiserOptions

    return options_from(train_args(**kw), DenoiserOptions)


# --- pure pieces ---------------------------------------------------------------------------------

def test_nt_xent_known_values():
    from training.losses import nt_xent

    # orthogonal pairs, identical partners: logit 1/T for the partner, 0 for the 2 others
    a = torch.eye(2)
    loss = nt_xent(a, a.clone(), temperature=0.5)
    expected = -np.log(np.exp(2) / (np.exp(2) + 2))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # swapping partners makes it much worse
    assert nt_xent(a, a.flip(0), 0.1).item() > 5


def test_condition_dropout_proportions():
    from training.train_denoiser import condition_drop

    u = np.random.default_rng(0).random(200_000)
    style, audio = condition_drop(u)
    assert np.mean(~style) == pytest.approx(0.55, abs=0.01)  # full conditions
    assert np.mean(style & ~audio) == pytest.approx(0.35, abs=0.01)  # no style
    assert np.mean(audio) == pytest.approx(0.10, abs=0.01)  # neither
    assert not np.any(audio & ~style)  # audio is only dropped together with style


def test_truncation_draws():
    from training.train_denoiser import draw_truncation

    end = draw_truncation(np.random.default_rng(0), 100_000, 100)
    cut = end < 100
    assert cut[:, 0].mean() == pytest.approx(0.3, abs=0.01)
    assert cut[:, 1].mean() == pytest.approx(0.4, abs=0.01)
    assert end.min() >= 1


def test_padded_frames_do_not_count(tiny_data):
    """Loss is unchanged by GT values after a window's end index (they are zeroed and masked)."""
    from diffposetalk.archs import make_config
    from diffposetalk.model import DiffPoseTalk
    from training.train_data import WindowBank, load_split, load_stats_np
    from training.train_denoiser import denoiser_losses, make_batch

    cfg = make_config("tiny")
    torch.manual_seed(0)
    model = DiffPoseTalk(cfg).eval()
    bank = WindowBank(load_split(tiny_data, "train"), 200, "train")
    b = make_batch(bank, np.random.default_rng(1), 2, load_stats_np(tiny_data), cfg)
    b.end[:] = [[60, 100], [100, 30]]
    b.u[:] = 1.0  # null style: the style encoder sees full GT windows (as the reference)
    with torch.no_grad():
        ref = denoiser_losses(model, b, "cpu")
        b.motion[0, 60:90] += 5.0  # padded part of sample 0, window 0 (90:100 are window 1's prev GT)
        b.motion[1, 130:] -= 3.0  # padded part of sample 1, window 1
        again = denoiser_losses(model, b, "cpu")
    for k in ref:
        assert again[k].item() == pytest.approx(ref[k].item(), rel=1e-5), k


def test_snr_weights_and_weighted_window_losses():
    """--snr-gamma: weight 1 + min(SNR, gamma); weighted terms are weighted means over samples."""
    from training.losses import snr_weights, window_losses

    abar = torch.tensor([0.5, 0.999, 1e-4])  # SNR 1, 999, ~1e-4
    np.testing.assert_allclose(snr_weights(abar, 5.0).numpy(), [2.0, 6.0, 1.0001], rtol=1e-4)
    torch.manual_seed(0)
    pred, gt = torch.randn(2, 10 + 20, 56), torch.randn(2, 20, 56)
    mask = torch.ones(2, 20, dtype=torch.bool)
    both = window_losses(pred, gt, mask, 10, False, True)
    first = window_losses(pred[:1], gt[:1], mask[:1], 10, False, True)
    only_first = window_losses(pred, gt, mask, 10, False, True, sample_weight=torch.tensor([1.0, 0.0]))
    equal = window_losses(pred, gt, mask, 10, False, True, sample_weight=torch.tensor([3.0, 3.0]))
    for k in both:
        assert only_first[k].item() == pytest.approx(first[k].item(), rel=1e-5), k
        assert equal[k].item() == pytest.approx(both[k].item(), rel=1e-5), k


def test_fixed_batch_losses_decrease(tiny_data):
    from diffposetalk.archs import make_config
    from diffposetalk.model import DiffPoseTalk
    from diffposetalk.style_encoder import StyleEncoder
    from training.losses import LossWeights, nt_xent, total_loss
    from training.train_data import WindowBank, load_split, load_stats_np
    from training.train_denoiser import denoiser_losses, make_batch, set_dropout
    from training.train_style import style_pair_batch

    cfg = make_config("tiny")
    stats = load_stats_np(tiny_data)
    clips = load_split(tiny_data, "train")
    torch.manual_seed(0)
    enc = StyleEncoder(cfg.style_encoder, cfg.motion_dim).eval()
    a, b = (torch.from_numpy(x) for x in style_pair_batch(WindowBank(clips, 100, "t"), np.random.default_rng(0),
                                                          4, stats, True))
    opt = torch.optim.Adam(enc.parameters(), 3e-3)
    se_losses = []
    for _ in range(6):
        loss = nt_xent(enc(a), enc(b))
        opt.zero_grad()
        loss.backward()
        opt.step()
        se_losses.append(loss.item())
    assert np.isfinite(se_losses).all() and se_losses[-1] < se_losses[0]

    model = DiffPoseTalk(cfg)
    set_dropout(model, 0.0)
    batch = make_batch(WindowBank(clips, 200, "t"), np.random.default_rng(0), 2, stats, cfg)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for _ in range(6):
        loss = total_loss(denoiser_losses(model, batch, "cpu"), LossWeights())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


# --- trainers end to end ---------------------------------------------------------------------------

def _weights(path, name):
    from safetensors.torch import load_file

    return load_file(str(path / name))


def test_style_encoder_resume_is_identical(tiny_data, tmp_path):
    from training.train_style import WEIGHTS, train_style_encoder

    train_style_encoder(style_options(data=tiny_data, out=tmp_path / "full", iters=4))
    train_style_encoder(style_options(data=tiny_data, out=tmp_path / "half", iters=2))
    train_style_encoder(style_options(data=tiny_data, out=tmp_path / "half", iters=4, resume=True))
    full, half = _weights(tmp_path / "full", WEIGHTS), _weights(tmp_path / "half", WEIGHTS)
    assert all(torch.equal(full[k], half[k]) for k in full)


def test_denoiser_trains_and_resumes_identically(tiny_data, tmp_path):
    from diffposetalk.model_dir import load_model_dir
    from training.train_denoiser import train_denoiser
    from training.train_style import train_style_encoder

    se = train_style_encoder(style_options(data=tiny_data, out=tmp_path / "se", iters=1))
    kw = dict(data=tiny_data, style_encoder=se, batch=2)
    train_denoiser(denoiser_options(out=tmp_path / "full", iters=2, **kw))
    train_denoiser(denoiser_options(out=tmp_path / "half", iters=1, **kw))
    train_denoiser(denoiser_options(out=tmp_path / "half", iters=2, resume=True, **kw))
    full, half = (_weights(tmp_path / d, "weights.safetensors") for d in ("full", "half"))
    assert all(torch.equal(full[k], half[k]) for k in full)
    loaded = load_model_dir(tmp_path / "full")  # a usable model directory
    se_w = _weights(se, "style_encoder.safetensors")
    assert torch.equal(loaded.model.style_encoder.motion_proj.weight, se_w["motion_proj.weight"])  # frozen
    with pytest.raises(UserError, match="not empty"):
        train_denoiser(denoiser_options(out=tmp_path / "full", iters=2, **kw))


def test_style_consistency_term(tiny_data):
    """--style-loss: 1 - cos of the frozen encoder's vectors, over style-conditioned whole windows
    only; its gradient reaches the denoiser and leaves the style encoder alone."""
    from diffposetalk.archs import make_config
    from diffposetalk.model import DiffPoseTalk
    from training.losses import LossWeights, total_loss
    from training.train_data import WindowBank, load_split, load_stats_np
    from training.train_denoiser import denoiser_losses, make_batch, set_trainable, style_consistency

    cfg = make_config("tiny")
    torch.manual_seed(0)
    model = DiffPoseTalk(cfg).eval()  # no dropout: the two passes below must be comparable
    set_trainable(model, "none")
    enc = model.style_encoder
    pred = torch.randn(2, 2, cfg.n_motions, cfg.motion_dim)
    with torch.no_grad():
        own = enc(pred.flatten(0, 1)).view(2, 2, -1)
    every = torch.ones(2, 2, dtype=torch.bool)
    assert style_consistency(enc, pred, own, every).item() == pytest.approx(0.0, abs=1e-5)
    assert style_consistency(enc, pred, -own, every).item() == pytest.approx(2.0, abs=1e-5)
    assert style_consistency(enc, pred, -own, torch.zeros(2, 2, dtype=torch.bool)).item() == 0.0
    one = torch.tensor([[True, False], [False, False]])
    assert style_consistency(enc, pred, own * torch.tensor([1.0, -1.0])[None, :, None], one).item() == \
        pytest.approx(0.0, abs=1e-5)  # the opposed second window is not kept

    bank = WindowBank(load_split(tiny_data, "train"), 200, "train")
    b = make_batch(bank, np.random.default_rng(2), 4, load_stats_np(tiny_data), cfg)
    b.end[:] = cfg.n_motions
    b.end[3, 1] = 50  # truncated: not read by the encoder
    b.u[:] = [0.1, 0.2, 0.95, 0.3]  # sample 2 has its style dropped
    terms = denoiser_losses(model, b, "cpu", weights=LossWeights(style=1.0))
    assert "style" not in denoiser_losses(model, b, "cpu")
    assert 0.0 < terms["style"].item() < 2.0
    total_loss(terms, LossWeights(style=1.0)).backward()
    assert all(p.grad is None for p in model.style_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.denoising_net.parameters())
    b.motion[2] += 3.0  # only the excluded sample changes: the style term does not
    with torch.no_grad():
        again = denoiser_losses(model, b, "cpu", weights=LossWeights(style=1.0))
    assert again["style"].item() == pytest.approx(terms["style"].item(), rel=1e-5)
    assert again["coef"].item() != pytest.approx(terms["coef"].item(), rel=1e-3)


def test_std_matching_ignores_phase_and_offset():
    """--std-loss compares each dimension's spread over a window, not frames: a time-reversed,
    shifted copy costs nothing, a damped one does; unkept windows do not count."""
    from training.train_denoiser import std_matching

    torch.manual_seed(0)
    gt = torch.randn(2, 2, 100, 6)
    every = torch.ones(2, 2, dtype=torch.bool)
    assert std_matching(gt.flip(2) + 1.0, gt, every).item() == pytest.approx(0.0, abs=1e-6)
    damped = gt * 0.5
    expected = ((0.5 * gt.std(dim=2)) ** 2).mean().item()
    assert std_matching(damped, gt, every).item() == pytest.approx(expected, rel=1e-5)
    only = torch.tensor([[True, False], [False, False]])
    mixed = torch.stack([gt[:, 0], damped[:, 1]], dim=1)  # damped only where not kept
    assert std_matching(mixed, gt, only).item() == pytest.approx(0.0, abs=1e-6)
    assert std_matching(mixed, gt, torch.zeros(2, 2, dtype=torch.bool)).item() == 0.0


def test_fine_tune_with_frozen_cached_audio(tiny_data, tmp_path):
    """--init starts from a model directory; --freeze-audio all leaves the audio path untouched,
    and its cached whole-clip features are the ones the model computes for that clip."""
    from diffposetalk.audio_encoder import normalize_clip
    from diffposetalk.model_dir import load_model_dir
    from training.train_data import load_split
    from training.train_denoiser import FeatureCache, train_denoiser
    from training.train_style import train_style_encoder

    se = train_style_encoder(style_options(data=tiny_data, out=tmp_path / "se", iters=1))
    base = train_denoiser(denoiser_options(data=tiny_data, style_encoder=se, out=tmp_path / "base", iters=1))
    tuned = train_denoiser(denoiser_options(data=tiny_data, style_encoder=se, out=tmp_path / "tuned", iters=2,
                                      init=base, freeze_audio="all"))
    before, after = _weights(base, "weights.safetensors"), _weights(tuned, "weights.safetensors")
    audio_keys = [k for k in before if k.startswith(("audio_encoder.", "audio_feature_map."))]
    assert audio_keys and all(torch.equal(before[k], after[k]) for k in audio_keys)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("denoising_net."))

    model = load_model_dir(base).model
    clip = load_split(tiny_data, "train", max_clips=1)[0]
    cache = FeatureCache(model, [clip], "cpu")
    with torch.no_grad():
        direct = model.audio_features(normalize_clip(torch.from_numpy(clip.audio))[None], clip.n_frames)[0]
    np.testing.assert_allclose(cache.window(clip.entry, 5, 20), direct[5:25].numpy(), atol=1e-6)

    with pytest.raises(UserError, match="no weights.safetensors"):
        train_denoiser(denoiser_options(data=tiny_data, style_encoder=se, out=tmp_path / "x", init=tmp_path / "se"))


def test_bad_data_path_and_split(tiny_data, tmp_path):
    from training.train_data import find_split_file, load_split

    with pytest.raises(UserError, match="no lmdb dataset"):
        load_split(tmp_path / "nowhere", "train")
    with pytest.raises(UserError, match="unknown split"):
        load_split(tiny_data, "dev")
    (tmp_path / "d").mkdir()
    with pytest.raises(UserError, match="split file"):
        find_split_file(tmp_path / "d", "train")


def test_demo_arch_size():
    from diffposetalk.archs import make_config
    from diffposetalk.model import DiffPoseTalk

    cfg = make_config("demo")
    assert cfg.hubert["hidden_size"] // 64 == cfg.hubert["num_attention_heads"]
    n = sum(p.numel() for p in DiffPoseTalk(cfg).parameters())
    assert n * 4 <= 12e6


def test_cli_registration_does_not_import_torch():
    """Every command, the training ones included, registers without torch (imported when one runs)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script = "import sys; from dpt_live.cli import build_parser; build_parser(); assert 'torch' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=str(root))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr
