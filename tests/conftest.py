"""Shared fixtures: tiny models built from configs (no hub downloads, no bundled weights needed)."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import time

import numpy as np
import pytest
import torch

# Exported ONNX graphs / TensorRT plans go to a per-run cache (inherited by servers the tests start),
# never into the user's ~/.cache/dpt-live.
if "DPT_LIVE_CACHE" not in os.environ:
    os.environ["DPT_LIVE_CACHE"] = tempfile.mkdtemp(prefix="dpt-live-test-cache-")
    atexit.register(shutil.rmtree, os.environ["DPT_LIVE_CACHE"], True)  # the run's own cache goes with it

# One thread: the test models are too small to gain from two, and on a shared 2-core machine two
# threads of a small model mostly wait for each other.
torch.set_num_threads(1)


def read_until(proc, pattern: str, timeout_s: float) -> tuple[re.Match, list[str]]:
    """Read a server subprocess's output line by line until ``pattern`` matches; fails with all
    it printed when it exits or ``timeout_s`` passes first. -> (the match, the lines read)."""
    lines = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(pattern, line)
        if m:
            return m, lines
    raise AssertionError(f"no line matching {pattern!r} printed:\n" + "".join(lines))


def random_stats(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"shape_mean": rng.normal(size=100).astype(np.float32),
            "shape_std": rng.uniform(0.5, 2, 100).astype(np.float32),
            "exp_mean": rng.normal(size=50).astype(np.float32),
            "exp_std": rng.uniform(0.5, 2, 50).astype(np.float32),
            "pose_mean": rng.normal(scale=0.05, size=6).astype(np.float32),
            "pose_std": rng.uniform(0.05, 0.2, 6).astype(np.float32)}


def make_tiny_model_dir(path, seed=0, **overrides):
    from diffposetalk.config import tiny_config
    from diffposetalk.model import DiffPoseTalk
    from diffposetalk.model_dir import save_model_dir

    torch.manual_seed(seed)
    cfg = tiny_config(**overrides)
    model = DiffPoseTalk(cfg)
    rng = np.random.default_rng(seed)
    styles = {"calm": rng.normal(size=cfg.d_style).astype(np.float32)}
    save_model_dir(path, cfg, model, random_stats(rng), styles)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from diffposetalk.model_dir import load_model_dir

    return load_model_dir(tiny_model_dir)


@pytest.fixture(scope="session")
def speech_like_wav(tmp_path_factory):
    """5.3 s of amplitude-modulated harmonics at 16 kHz (stands in for speech in shape tests)."""
    import soundfile as sf

    sr = 16000
    t = np.arange(int(5.3 * sr)) / sr
    audio = 0.2 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    sf.write(path, audio.astype(np.float32), sr)
    return path


def make_guided_student(path):
    """A tiny distilled student (1 step, 8-frame window) whose guidance branch has weights: one
    straight from init has a zero branch, so the guidance input would not change its output (and
    a wrong wiring of that input would not show)."""
    from diffposetalk.model_dir import load_model_dir

    loaded = load_model_dir(make_tiny_model_dir(path, seed=3, kind="student", student_steps=1, n_motions=8))
    torch.manual_seed(5)
    with torch.no_grad():
        for p in loaded.model.denoising_net.guidance_map.parameters():
            p.normal_(0, 0.3)
    return loaded


@pytest.fixture(scope="module")
def teacher(tiny_model_dir):
    """The tiny teacher, loaded (a module's own; the networks tests compare backends on it)."""
    from diffposetalk.model_dir import load_model_dir

    return load_model_dir(tiny_model_dir)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return make_guided_student(tmp_path_factory.mktemp("student") / "s")


def assert_same_weights(a_dir, b_dir) -> None:
    """Two model directories hold the same weights (e.g. a resumed training run and a straight one)."""
    from diffposetalk.model_dir import load_model_dir

    a, b = load_model_dir(a_dir).model.state_dict(), load_model_dir(b_dir).model.state_dict()
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(v, b[k], msg=k)


def run_in_threads(fn, n: int) -> None:
    """fn(0) … fn(n - 1), each in a thread of its own, all at once; returns when all are done."""
    import threading

    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
