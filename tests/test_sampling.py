"""CFG arithmetic, samplers, windowing and noise reproducibility."""

import numpy as np
import pytest
import torch

from diffposetalk.config import tiny_config
from diffposetalk.generate import generate_motion, plan_windows
from diffposetalk.model import DiffPoseTalk, Guidance, WindowCondition, combine_guidance
from diffposetalk.sampler import DDIMSampler, DDPMSampler, FileNoise, RandomNoise


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DiffPoseTalk(tiny_config()).eval()


def _cond(model, n=1):
    g = torch.Generator().manual_seed(1)
    cfg = model.cfg
    return WindowCondition(torch.randn(n, cfg.n_motions, cfg.feature_dim, generator=g),
                           torch.randn(n, 100, generator=g), torch.randn(n, cfg.d_style, generator=g),
                           indicator=torch.ones(n, cfg.n_motions))


def test_combine_guidance_formulas():
    r0, r1, r2 = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([10.0])
    inc = combine_guidance([r0, r1, r2], [1.15, 3.0], "incremental")
    assert inc.item() == pytest.approx(1 + 1.15 * (3 - 1) + 3 * (10 - 3))
    # independent as the reference computes it: its in-place update makes the second term
    # relative to r0 + w_a (r1 - r0)
    r0p = 1 + 1.15 * (3 - 1)
    ind = combine_guidance([r0, r1, r2], [1.15, 3.0], "independent")
    assert ind.item() == pytest.approx(r0p + 3 * (10 - r0p))
    single = combine_guidance([r0, r1], [2.0], "independent")
    assert single.item() == pytest.approx(1 + 2 * (3 - 1))


def test_guided_x0_unit_scales_equal_conditional_pass(model):
    """incremental with w_a = w_s = 1 collapses to the fully conditioned network output."""
    cond = _cond(model, 2)
    x = torch.randn(2, 100, 54)
    with torch.no_grad():
        guided = model.guided_x0(x, 7, cond, Guidance({"audio": 1.0, "style": 1.0}))
        plain = model.denoise(x, torch.tensor([7, 7]), cond)[:, -100:]
    assert torch.allclose(guided, plain, atol=1e-5)


def test_guided_x0_batches_the_three_passes(model):
    cond = _cond(model)
    x = torch.randn(1, 100, 54)
    t = torch.tensor([9])
    with torch.no_grad():
        r0 = model.denoise(x, t, cond, audio_feat=model.null_audio_feat.expand(1, 100, -1),
                           style=model.null_style_feat.expand(1, -1, -1))[:, -100:]
        r1 = model.denoise(x, t, cond, style=model.null_style_feat.expand(1, -1, -1))[:, -100:]
        r2 = model.denoise(x, t, cond)[:, -100:]
        guided = model.guided_x0(x, 9, cond, Guidance({"audio": 1.15, "style": 3.0}))
    assert torch.allclose(guided, r0 + 1.15 * (r1 - r0) + 3.0 * (r2 - r1), atol=1e-5)


def test_different_scales_give_different_outputs(model):
    cond, x = _cond(model), torch.randn(1, 100, 54)
    with torch.no_grad():
        a = model.guided_x0(x, 5, cond, Guidance({"audio": 1.0, "style": 1.0}))
        b = model.guided_x0(x, 5, cond, Guidance({"audio": 2.0, "style": 4.0}))
    assert (a - b).abs().max() > 1e-3


def test_dynamic_thresholding_clamps(model):
    cond, x = _cond(model), torch.randn(1, 100, 54) * 10
    with torch.no_grad():
        out = model.guided_x0(x, 5, cond, Guidance({"audio": 1.0, "style": 1.0}, dynamic_threshold=(0.5, 1.0, 1.0)))
    assert out.abs().max() <= 1.0 + 1e-6


@pytest.mark.parametrize("seconds,windows,frames,pad_frames", [
    (3.0, 1, 75, 25), (4.0, 1, 100, 0), (8.0, 2, 200, 0), (9.3, 3, 232, 68), (0.5, 1, 12, 88)])
def test_plan_windows(seconds, windows, frames, pad_frames):
    plan = plan_windows(int(seconds * 16000), 100, 25)
    assert (plan.n_windows, plan.n_frames, plan.n_pad_frames) == (windows, frames, pad_frames)


def test_generate_windows_continue_and_reuse_x_T(model):
    """Windows are continued from the previous window's last 10 frames; the last window's padded
    frames get indicator 0 and are dropped; x_T is drawn once."""
    calls = []
    real_sample = DDIMSampler.sample

    def spy(self, m, denoise, x_T, noise=None, window=0):
        cond = denoise.cond
        calls.append((window, cond.prev_motion, cond.prev_audio, cond.indicator.clone(), x_T.clone()))
        out = real_sample(self, m, denoise, x_T, noise, window)
        calls[-1] += (out,)
        return out

    audio = np.random.default_rng(0).normal(size=int(9.3 * 16000)).astype(np.float32)
    DDIMSampler.sample = spy
    try:
        motion = generate_motion(model, audio, torch.zeros(100), torch.randn(model.cfg.d_style),
                                 DDIMSampler(3), Guidance(), RandomNoise(0))
    finally:
        DDIMSampler.sample = real_sample
    assert motion.shape == (1, 232, 54)
    assert [c[0] for c in calls] == [0, 1, 2]
    assert calls[0][1] is None and calls[0][2] is None  # first window: learned start features
    assert torch.equal(calls[1][1], calls[0][5][:, -10:])
    assert torch.equal(calls[2][4], calls[0][4])  # same x_T for every window
    assert calls[2][3][0, :32].all() and not calls[2][3][0, 32:].any()  # 32 real frames
    assert torch.equal(motion[:, 200:], calls[2][5][:, :32])


def test_seed_reproducibility(model):
    audio = np.random.default_rng(1).normal(size=16000 * 5).astype(np.float32)
    args = (model, audio, torch.zeros(100), torch.randn(model.cfg.d_style), DDPMSampler(), Guidance())
    a = generate_motion(*args, noise=RandomNoise(3))
    b = generate_motion(*args, noise=RandomNoise(3))
    c = generate_motion(*args, noise=RandomNoise(4))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_file_noise_reproduces_random_noise(model, tmp_path):
    """The npz format (x_T, z[w, i] at t = steps - i) reproduces a seeded run exactly."""
    T, D = model.cfg.n_diff_steps, model.cfg.motion_dim
    audio = np.random.default_rng(2).normal(size=int(4.5 * 16000)).astype(np.float32)  # 2 windows
    g = torch.Generator().manual_seed(11)
    x_T = torch.randn(1, 100, D, generator=g)
    z = torch.stack([torch.stack([torch.randn(1, 100, D, generator=g)[0] for _ in range(T - 1)])
                     for _ in range(2)])
    np.savez(tmp_path / "noise.npz", x_T=x_T[0].numpy(), z=z.numpy())
    style = torch.randn(model.cfg.d_style)
    from_file = generate_motion(model, audio, torch.zeros(100), style, DDPMSampler(), Guidance(),
                                noise=FileNoise.load(tmp_path / "noise.npz", T))
    # RandomNoise draws x_T then, per window, z for t = T .. 2 in order: the same stream
    from_seed = generate_motion(model, audio, torch.zeros(100), style, DDPMSampler(), Guidance(),
                                noise=RandomNoise(11))
    assert torch.equal(from_file, from_seed)


def test_file_noise_shape_errors(model, tmp_path):
    np.savez(tmp_path / "bad.npz", x_T=np.zeros((100, 3), np.float32), z=np.zeros((1, 19, 100, 3), np.float32))
    with pytest.raises(ValueError, match="x_T has shape"):
        generate_motion(model, np.zeros(16000, np.float32) + 0.1, torch.zeros(100), None, DDPMSampler(),
                        Guidance(), noise=FileNoise.load(tmp_path / "bad.npz", 20))


def test_ddim_is_deterministic_and_uses_subset(model):
    s = DDIMSampler(4)
    assert s.timesteps(model) == [20, 15, 10, 5]
    assert DDIMSampler(1).timesteps(model) == [20]
    cond, x_T = _cond(model), torch.randn(1, 100, 54)
    a = s.sample(model, model.guided_denoiser(cond, Guidance()), x_T, RandomNoise(0))
    b = s.sample(model, model.guided_denoiser(cond, Guidance()), x_T, RandomNoise(1))
    assert torch.equal(a, b)


def test_passes_per_window(model):
    assert DDPMSampler().passes_per_window(model, Guidance(), has_style=True) == 3 * 20
    assert DDIMSampler(2).passes_per_window(model, Guidance(), has_style=False) == 2 * 2
