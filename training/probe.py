"""Does a trained denoiser use its noisy input x_t? (`dpt-live probe`)

A denoiser that predicts x0 should be nearly exact when x_t is nearly clean (small t) and fall back
to the conditional mean only when x_t is mostly noise. One that ignores x_t gives the same error
at every t, and its samples collapse to the conditional mean (no diversity, too little motion).
The probe takes fixed GT windows of a split, noises them to a grid of steps and reports the x0
error per step, next to the error of simply rescaling x_t (what a perfect copy of x_t would give),
plus how much the output moves when x_t's noise or the audio features change."""

from __future__ import annotations

from pathlib import Path

import numpy as np

GROUPS = {"all": slice(None), "jaw": slice(53, 54), "head": slice(50, 53)}  # normalised motion dims


def probe_denoiser(loaded, clips, steps: list[int], n_windows: int, seed: int) -> dict:
    """x0 error per step (normalised MSE per dim group), the rescaled-x_t baseline, and the output's
    mean absolute change under new x_t noise vs under other windows' audio features (at the
    middle probed step). Window 1 of each drawn sample continues from its GT window 0."""
    import torch

    from diffposetalk.errors import UserError
    from training.train_data import WindowBank
    from training.train_denoiser import audio_features, make_batch

    model, cfg = loaded.model.eval(), loaded.config
    bad = [t for t in steps if not 1 <= t <= cfg.n_diff_steps]
    if bad:
        raise UserError(f"--steps {bad}: must be in 1..{cfg.n_diff_steps}")
    stats = {k: v.cpu().numpy() for k, v in loaded.stats.items()}
    bank = WindowBank(clips, 2 * cfg.n_motions, "probe split")
    rng = np.random.default_rng(seed)
    b = make_batch(bank, rng, n_windows, stats, cfg, truncate=False)
    L, P, N = cfg.n_motions, cfg.n_prev_motions, n_windows
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        feats, prev_audio = audio_features(model, b, model.device)
        motion = torch.from_numpy(b.motion).to(model.device)
        gt = motion[:, L:]
        style = model.style_encoder(motion[:, :L]) if model.style_encoder is not None else None
        person = model._person(torch.from_numpy(b.shape).to(model.device), style)
        prev_motion = motion[:, L - P:L]

        def predict(x_t, t, audio):
            return model.denoising_net(x_t, audio, person, prev_motion, prev_audio,
                                       torch.full((N,), t, device=model.device))[:, P:]

        rows = []
        for t in steps:
            abar = model.diffusion_sched.alpha_bars[t]
            x_t = model.diffusion_sched.add_noise(gt, torch.full((N,), t), torch.randn(gt.shape, generator=gen))
            err = (predict(x_t, t, feats[:, 1]) - gt) ** 2
            copy = (x_t / abar.sqrt() - gt) ** 2
            rows.append({"t": t, "alpha_bar": float(abar),
                         **{f"x0_mse_{g}": float(err[..., s].mean()) for g, s in GROUPS.items()},
                         "rescaled_x_t_mse_all": float(copy.mean())})
        t_mid = steps[len(steps) // 2]
        noise = [torch.randn(gt.shape, generator=gen) for _ in range(2)]
        x_a, x_b = (model.diffusion_sched.add_noise(gt, torch.full((N,), t_mid), e) for e in noise)
        base = predict(x_a, t_mid, feats[:, 1])
        other_noise = (predict(x_b, t_mid, feats[:, 1]) - base).abs().mean()
        other_audio = (predict(x_a, t_mid, feats[:, 1].roll(1, dims=0)) - base).abs().mean()
    return {"windows": N, "per_step": rows,
            "sensitivity": {"t": t_mid, "new_x_t_noise": float(other_noise), "other_audio": float(other_audio)}}


def probe_model_dir(model: Path, data: Path, split: str, steps: list[int], n_windows: int, seed: int,
                    threads: int = 1) -> dict:
    """:func:`probe_denoiser` on a model directory and a split of a dataset (torch on ``threads``
    CPU threads)."""
    import torch

    from diffposetalk.model_dir import load_model_dir
    from training.train_data import load_split

    torch.set_num_threads(threads)
    return probe_denoiser(load_model_dir(model), load_split(data, split), steps, n_windows, seed)


def format_table(result: dict) -> str:
    """The probe's result as the table `dpt-live probe` prints."""
    lines = [f"{'t':>4} {'abar':>8} {'x0 mse all':>11} {'jaw':>7} {'head':>7} {'copy x_t':>9}"]
    for r in result["per_step"]:
        lines.append(f"{r['t']:>4} {r['alpha_bar']:8.5f} {r['x0_mse_all']:11.4f} {r['x0_mse_jaw']:7.4f} "
                     f"{r['x0_mse_head']:7.4f} {r['rescaled_x_t_mse_all']:9.4f}")
    s = result["sensitivity"]
    lines.append(f"output change at t={s['t']}: new x_t noise {s['new_x_t_noise']:.4f}, "
                 f"other windows' audio {s['other_audio']:.4f}")
    return "\n".join(lines)
