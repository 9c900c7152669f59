"""Shapes and options of the denoiser, style encoder, schedule and audio path."""

import math

import pytest
import torch

from diffposetalk.audio_encoder import normalize_clip, pad_audio
from diffposetalk.config import ModelConfig, tiny_config
from diffposetalk.diffusion import DiffusionSchedule
from diffposetalk.layers import alignment_mask
from diffposetalk.model import DiffPoseTalk, WindowCondition, coef_to_motion, motion_to_coef
from engines.networks import TorchNetworks


def _cond(model, n=2, style=True):
    cfg = model.cfg
    return WindowCondition(audio_feat=torch.randn(n, cfg.n_motions, cfg.feature_dim),
                           shape=torch.randn(n, 100), style=torch.randn(n, cfg.d_style) if style else None,
                           indicator=torch.ones(n, cfg.n_motions))


@pytest.mark.parametrize("head_pose,dim", [(True, 54), (False, 51)])
@pytest.mark.parametrize("learnable_pe", [True, False])
@pytest.mark.parametrize("use_indicator", [True, False])
def test_denoiser_shapes(head_pose, dim, learnable_pe, use_indicator):
    torch.manual_seed(0)
    model = DiffPoseTalk(tiny_config(head_pose=head_pose, learnable_pe=learnable_pe,
                                     use_indicator=use_indicator)).eval()
    assert model.cfg.motion_dim == dim
    assert model.denoising_net.feature_proj.in_features == dim + use_indicator
    x = torch.randn(2, 100, dim)
    out = model.denoise(x, torch.tensor([5, 7]), _cond(model))
    assert out.shape == (2, 110, dim)
    assert ("denoising_net.PE" in model.state_dict()) == learnable_pe


def test_alignment_mask_width():
    m = alignment_mask(10, 100, 1)
    assert m.shape == (111, 110)
    assert not m[0].any()  # person token sees all audio
    assert torch.equal(~m[1:], torch.eye(110, dtype=torch.bool))  # frame i sees audio i only
    m3 = alignment_mask(10, 100, 3)
    assert (~m3[1 + 50]).sum() == 5 and not m3[1 + 50, 48:53].any()
    assert (~m3[1]).sum() == 3  # clipped at the start


def test_alignment_mask_is_respected():
    """With width 1, changing the audio of frame j only changes outputs at frame j."""
    torch.manual_seed(0)
    model = DiffPoseTalk(tiny_config(n_layers=1)).eval()
    cond = _cond(model, n=1)
    x = torch.randn(1, 100, 54)
    base = model.denoise(x, torch.tensor([3]), cond)
    feat = cond.audio_feat.clone()
    feat[0, 40] += 5
    changed = model.denoise(x, torch.tensor([3]), WindowCondition(feat, cond.shape, cond.style,
                                                                  indicator=cond.indicator))
    # the person token sees frame 40's audio, so every frame may change a little through it;
    # the frame aligned to the changed audio must change most
    diff = (changed - base).abs().amax(-1)[0]
    assert diff.argmax().item() == 10 + 40


def test_no_mask_option():
    model = DiffPoseTalk(tiny_config(align_mask_width=0))
    assert model.denoising_net.alignment_mask is None


@pytest.mark.parametrize("mode", ["linear", "cosine", "quadratic", "sigmoid"])
def test_schedules(mode):
    s = DiffusionSchedule(500, mode)
    assert s.betas.shape == (501,) and s.betas[0] == 0
    assert torch.all(s.alpha_bars[1:] < 1) and torch.all(s.alpha_bars > 0)
    assert torch.all(s.alpha_bars[1:] <= s.alpha_bars[:-1])
    assert s.sigmas_inflex[1] == 0  # posterior std at t=1 is 0 (alpha_bar_0 = 1)


def test_cosine_schedule_closed_form():
    T, s = 500, 0.008
    sched = DiffusionSchedule(T, "cosine")
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    for t in (1, 10, 250, 400):
        beta = min(max(1 - f(t) / f(t - 1), 1e-4), 0.999)
        assert sched.betas[t].item() == pytest.approx(beta, rel=1e-4)
    abar = 1.0
    for t in range(1, 301):
        abar *= 1 - sched.betas[t].item()
    assert sched.alpha_bars[300].item() == pytest.approx(abar, rel=1e-4)


def test_pad_audio_gives_exact_frame_count():
    cfg = tiny_config()
    model = DiffPoseTalk(cfg).eval()
    for n in (64000, 64000 * 3, 32000 + 123):
        padded = pad_audio(torch.randn(1, n))
        cnn = model.audio_encoder.hubert.feature_extractor(padded)
        assert cnn.shape[-1] == n // 320
    with torch.no_grad():
        feats = model.audio_features(torch.randn(1, 64000), 100)
    assert feats.shape == (1, 100, cfg.feature_dim)


def test_normalize_clip_matches_reference_formula():
    a = torch.randn(1000) * 3 + 1
    n = normalize_clip(a)
    expected = (a - a.mean()) / (torch.std(a, unbiased=True) + 1e-5)
    assert torch.allclose(n, expected)


def test_full_size_parameter_count():
    """The default config is the reference architecture (HuBERT-base + 8x512 decoder)."""
    model = DiffPoseTalk(ModelConfig(style_encoder=None))
    n_hubert = sum(p.numel() for p in model.audio_encoder.parameters())
    n_dec = sum(p.numel() for p in model.denoising_net.parameters())
    assert 94e6 < n_hubert < 95e6
    assert model.denoising_net.PE.shape == (1, 111, 512)
    assert model.denoising_net.person_proj.weight.shape == (512, 228)
    assert model.denoising_net.feature_proj.weight.shape == (512, 55)
    assert 34e6 < n_dec < 35e6  # 8 decoder layers of ~4.2 M each


@pytest.mark.parametrize("head_pose", [True, False])
def test_coef_motion_round_trip(head_pose):
    g = torch.Generator().manual_seed(0)
    stats = {"exp_mean": torch.randn(50, generator=g), "exp_std": torch.rand(50, generator=g) + 0.5,
             "pose_mean": torch.randn(6, generator=g) * 0.1, "pose_std": torch.rand(6, generator=g) + 0.1}
    exp, pose = torch.randn(7, 50, generator=g), torch.randn(7, 6, generator=g) * 0.1
    motion = coef_to_motion(exp, pose, stats, head_pose)
    assert motion.shape == (7, 54 if head_pose else 51)
    back = motion_to_coef(motion, stats, head_pose)
    assert torch.allclose(back["exp"], exp, atol=1e-5)
    assert torch.allclose(back["pose"][:, 3], pose[:, 3], atol=1e-5)
    # jaw y/z come back as the de-normalised zero, i.e. pose_mean (reference behaviour)
    assert torch.allclose(back["pose"][:, 4:], stats["pose_mean"][4:].expand(7, 2))
    if head_pose:
        assert torch.allclose(back["pose"][:, :3], pose[:, :3], atol=1e-5)
    else:
        assert torch.all(back["pose"][:, :3] == 0)


def test_style_encoder_shape():
    torch.manual_seed(0)
    model = DiffPoseTalk(tiny_config()).eval()
    style = TorchNetworks(model).style(torch.randn(3, 100, 54).numpy())
    assert style.shape == (3, model.cfg.d_style)
