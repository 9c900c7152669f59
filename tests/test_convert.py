"""Importing reference-layout checkpoints; refusing malicious or corrupt files; model directories."""

import argparse
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffposetalk.config import tiny_config
from diffposetalk.convert import convert
from diffposetalk.generate import generate_motion
from diffposetalk.layers import sinusoid_table
from diffposetalk.model import DiffPoseTalk, Guidance
from diffposetalk.model_dir import load_model_dir
from diffposetalk.safe_pickle import CheckpointError, UnsafePickleError, load_torch_checkpoint
from diffposetalk.sampler import DDIMSampler, RandomNoise
from tests.conftest import random_stats


def reference_layout(model: DiffPoseTalk, head_pose: bool):
    """Our weights written the way the reference's torch.save files hold them."""
    cfg = model.cfg
    den, se = {}, {}
    for k, v in model.state_dict().items():
        if k.startswith("style_encoder."):
            se[k[len("style_encoder."):]] = v.clone()
            continue
        if k.startswith("audio_encoder.hubert."):
            k = "audio_encoder." + k[len("audio_encoder.hubert."):]
            k = k.replace("parametrizations.weight.original0", "weight_g").replace(
                "parametrizations.weight.original1", "weight_v")
        den[k] = v.clone()
    den["denoising_net.TE.pe"] = sinusoid_table(cfg.n_diff_steps + 1, cfg.feature_dim)
    den["denoising_net.alignment_mask"] = model.denoising_net.alignment_mask.clone()
    se["PE.pe"] = sinusoid_table(600, cfg.d_style)  # ignored on import
    args = argparse.Namespace(
        target="sample", guiding_conditions="audio,style", cfg_mode="incremental",
        n_diff_steps=cfg.n_diff_steps, diff_schedule="cosine", rot_repr="aa", no_head_pose=not head_pose,
        style_enc_ckpt=pathlib.PurePosixPath("experiments/SE/head-L4H4-T0.1-BS32/checkpoints/iter_0026000.pt"),
        d_style=cfg.d_style, audio_model="hubert", architecture="decoder", align_mask_width=1,
        no_use_learnable_pe=False, use_indicator=True, feature_dim=cfg.feature_dim, n_heads=cfg.n_heads,
        n_layers=cfg.n_layers, mlp_ratio=cfg.mlp_ratio, n_motions=100, n_prev_motions=10, fps=25,
        pad_mode="zero", data_root=pathlib.PurePosixPath("datasets/HDTF_TFHP/lmdb"))
    se_args = argparse.Namespace(rot_repr="aa", no_head_pose=not head_pose, feature_dim=cfg.d_style,
                                 n_heads=cfg.style_encoder.n_heads, n_layers=cfg.style_encoder.n_layers,
                                 mlp_ratio=cfg.style_encoder.mlp_ratio, n_motions=100, fps=25,
                                 stats_file=pathlib.PurePosixPath("stats_train.npz"))
    return ({"args": args, "model": den, "iter": 110000}, {"args": se_args, "encoder": se, "iter": 26000})


@pytest.fixture(params=[True, False], ids=["head_pose", "no_head_pose"])
def reference_files(request, tmp_path):
    head_pose = request.param
    torch.manual_seed(3)
    model = DiffPoseTalk(tiny_config(head_pose=head_pose)).eval()
    den, se = reference_layout(model, head_pose)
    torch.save(den, tmp_path / "iter_0110000.pt")
    torch.save(se, tmp_path / "iter_0026000.pt")
    np.savez(tmp_path / "stats_train.npz", **random_stats(np.random.default_rng(0)))
    return model, tmp_path, head_pose


def test_convert_reproduces_the_model(reference_files):
    model, d, head_pose = reference_files
    out = convert(d / "iter_0110000.pt", d / "iter_0026000.pt", d / "stats_train.npz", d / "converted")
    loaded = load_model_dir(out)
    assert loaded.config.head_pose == head_pose and loaded.config.motion_dim == (54 if head_pose else 51)
    assert loaded.config.use_indicator and loaded.config.learnable_pe and loaded.config.align_mask_width == 1
    assert loaded.config.guiding_conditions == ["audio", "style"]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    audio = np.random.default_rng(0).normal(size=16000 * 5).astype(np.float32)
    style = torch.randn(loaded.config.d_style)
    a = generate_motion(model, audio, torch.zeros(100), style, DDIMSampler(3), Guidance(), RandomNoise(0))
    b = generate_motion(loaded.model, audio, torch.zeros(100), style, DDIMSampler(3), Guidance(), RandomNoise(0))
    assert torch.equal(a, b)


def test_convert_cli_and_style_command(reference_files, tmp_path):
    model, d, head_pose = reference_files
    out = tmp_path / "cli_model"
    np.save(tmp_path / "calm.npy", np.ones(16, np.float32))
    run = lambda *a: subprocess.run([sys.executable, "-m", "dpt_live.cli", *map(str, a)],
                                    capture_output=True, text=True, cwd=pathlib.Path(__file__).parent.parent)
    r = run("convert", "--denoiser", d / "iter_0110000.pt", "--style-encoder", d / "iter_0026000.pt",
            "--stats", d / "stats_train.npz", "--style-preset", f"calm={tmp_path / 'calm.npy'}", "-o", out)
    assert r.returncode == 0, r.stderr
    assert (out / "styles" / "calm.npy").is_file()
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "clip.npz", exp=rng.normal(size=(150, 50)), pose=rng.normal(scale=0.1, size=(150, 6)))
    r = run("style", "--model", out, "--motion", tmp_path / "clip.npz", "--start", 20, "-o", tmp_path / "s.npy")
    assert r.returncode == 0, r.stderr
    vec = np.load(tmp_path / "s.npy")
    # independent computation: normalise, drop jaw y/z (and global without head pose), encode
    stats = random_stats(np.random.default_rng(0))
    clip = np.load(tmp_path / "clip.npz")
    exp = (clip["exp"][20:120] - stats["exp_mean"]) / stats["exp_std"]
    pose = (clip["pose"][20:120] - stats["pose_mean"]) / stats["pose_std"]
    motion = np.concatenate([exp, pose[:, :4] if head_pose else pose[:, 3:4]], -1)
    with torch.no_grad():
        expected = model.style_encoder(torch.tensor(motion, dtype=torch.float32)[None])[0].numpy()
    np.testing.assert_allclose(vec, expected, atol=1e-5)
    r = run("style", "--model", out, "--motion", tmp_path / "clip.npz", "--start", 100, "-o", tmp_path / "x.npy")
    assert r.returncode == 2 and "need frames 100..199" in r.stderr


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/dpt_live_pwned",))


def test_malicious_checkpoint_is_refused(tmp_path):
    path = tmp_path / "iter_0110000.pt"
    torch.save({"args": None, "model": {"x": _Evil()}, "iter": 1}, path)
    if os.path.exists("/tmp/dpt_live_pwned"):
        os.remove("/tmp/dpt_live_pwned")
    with pytest.raises(UnsafePickleError) as err:
        load_torch_checkpoint(path)
    assert str(path) in str(err.value) and "system" in str(err.value)
    assert not os.path.exists("/tmp/dpt_live_pwned")
    np.savez(tmp_path / "stats.npz", **random_stats(np.random.default_rng(0)))
    with pytest.raises(UnsafePickleError):
        convert(path, None, tmp_path / "stats.npz", tmp_path / "out")


def test_corrupt_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_torch_checkpoint(bad)
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    np.savez(tmp_path / "stats.npz", **random_stats(np.random.default_rng(0)))
    with pytest.raises(CheckpointError, match="missing 'start_motion_feat'"):
        convert(tmp_path / "foreign.pt", None, tmp_path / "stats.npz", tmp_path / "out")
    # a truncated archive
    torch.save({"model": {"w": torch.zeros(1000)}}, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_torch_checkpoint(tmp_path / "trunc.pt")


def test_mixed_sets_are_refused(tmp_path):
    torch.manual_seed(0)
    head = DiffPoseTalk(tiny_config(head_pose=True))
    nohead = DiffPoseTalk(tiny_config(head_pose=False))
    den, _ = reference_layout(head, True)
    _, se = reference_layout(nohead, False)
    torch.save(den, tmp_path / "d.pt")
    torch.save(se, tmp_path / "s.pt")
    np.savez(tmp_path / "stats.npz", **random_stats(np.random.default_rng(0)))
    with pytest.raises(CheckpointError, match="mixed"):
        convert(tmp_path / "d.pt", tmp_path / "s.pt", tmp_path / "stats.npz", tmp_path / "out")


def test_model_dir_errors(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "weights.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="weights.safetensors"):
        load_model_dir(broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_model_dir(broken)
    with pytest.raises(CheckpointError, match="not found"):
        load_model_dir(tmp_path / "nowhere")
    loaded = load_model_dir(tiny_model_dir)
    assert "calm" in loaded.styles and loaded.style("calm").shape == (16,)
