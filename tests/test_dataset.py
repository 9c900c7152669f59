"""HDTF_TFHP lmdb reader and the torch datasets (written here with TfhpWriter; no espeak)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from diffposetalk.errors import UserError
from diffposetalk.safe_pickle import UnsafePickleError
from training import tfhp_format as fmt
from training.dataset import DenoiserDataset, StyleDataset, TfhpLmdb, load_stats
from training.tfhp_writer import TfhpWriter

# person -> (split, frames of each clip)
CLIPS = {"P1": ("train", [250, 230]), "P2": ("train", [120, 205]), "P3": ("val", [210]),
         "P4": ("test", [90])}


def _clip(rng, n):
    t = np.arange(n * 640) / 16000
    return {"exp": rng.normal(size=(n, 50)).astype(np.float32),
            "pose": np.concatenate([rng.normal(0, 0.1, (n, 4)), np.zeros((n, 2))], 1).astype(np.float32),
            "shape": np.tile(rng.normal(size=100), (n, 1)).astype(np.float32),
            "audio": (0.3 * np.sin(2 * np.pi * 200 * t) * rng.uniform(0.2, 1)).astype(np.float32)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfhp") / "lmdb"
    rng = np.random.default_rng(0)
    clips = {}
    with TfhpWriter(root) as writer:
        for person, (split, lengths) in CLIPS.items():
            for video, n in enumerate(lengths):
                clip = _clip(rng, n)
                clips[writer.add_clip(person, video, split, **clip)] = clip
    return root, clips


def test_round_trip(dataset):
    root, clips = dataset
    data = TfhpLmdb(root)
    assert data.seg_len == 100
    assert data.list_entries("train") == ["P1/000", "P1/001", "P2/000", "P2/001"]
    assert data.persons("train") == {"P1": ["P1/000", "P1/001"], "P2": ["P2/000", "P2/001"]}
    for entry, clip in clips.items():
        got = data.read_clip(entry)
        assert data.n_frames(entry) == len(clip["exp"])
        for key in ("exp", "pose", "shape"):
            assert got[key].dtype == np.float32 and np.array_equal(got[key], clip[key])
        assert got["audio"].dtype == np.float32 and got["audio"].shape == clip["audio"].shape
        assert np.abs(got["audio"] - clip["audio"]).max() <= 1 / 32768 + 1e-7  # 16-bit FLAC
    window = data.read_window("P1/000", 95, 110)  # spans three segments
    full = data.read_clip("P1/000")
    assert np.array_equal(window["exp"], full["exp"][95:205])
    assert np.array_equal(window["audio"], full["audio"][95 * 640:205 * 640])
    with pytest.raises(ValueError):
        data.read_window("P1/000", 200, 51)


def test_stats_file_is_train_only(dataset):
    root, clips = dataset
    stats = load_stats(root)  # a directory resolves to stats_train.npz
    train = [c for e, c in clips.items() if CLIPS[e.split("/")[0]][0] == "train"]
    exp = np.concatenate([c["exp"] for c in train]).astype(np.float64)
    np.testing.assert_allclose(stats["exp_mean"], exp.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats["exp_std"], exp.std(0), rtol=1e-5)
    assert np.all(stats["pose_std"][4:] == 1.0)  # constant jaw y/z: unit std, never 0
    assert all(v.dtype == np.float32 for v in stats.values())


def _put(root, key: bytes, value: bytes):
    import lmdb

    env = lmdb.open(str(root), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(key, value)
    env.close()


def _one_clip_lmdb(path, value_bytes: bytes, n: int = 3):
    _put(path, b"metadata", fmt.encode_value({"seg_len": 100}))
    _put(path, b"X/000/metadata", fmt.encode_value({"n_frames": n}))
    _put(path, b"X/000/000", value_bytes)
    (path / "train.txt").write_text("X/000\n")


def test_reads_numpy_1x_and_protocol_5_pickles(tmp_path):
    coef = {"shape": np.ones((3, 100)), "exp": np.arange(150.0).reshape(3, 50), "pose": np.zeros((3, 6))}
    value = {"coef": coef, "audio": fmt.encode_flac(np.zeros(3 * 640, np.float32))}
    # numpy 1.x names its core module numpy.core; protocol 2 spells globals as text
    legacy = pickle.dumps(value, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in legacy
    for name, raw in (("legacy", legacy), ("p5", pickle.dumps(value, protocol=5))):
        root = tmp_path / name
        root.mkdir()
        _one_clip_lmdb(root, raw)
        clip = TfhpLmdb(root).read_clip("X/000")
        assert np.array_equal(clip["exp"], coef["exp"].astype(np.float32)) and clip["audio"].shape == (1920,)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_refuses_a_malicious_value(tmp_path):
    _one_clip_lmdb(tmp_path, pickle.dumps({"coef": _Exploit(), "audio": b""}, protocol=4))
    with pytest.raises(UnsafePickleError, match="os.system|posix.system"):
        TfhpLmdb(tmp_path).read_clip("X/000")


def test_clear_errors(dataset, tmp_path):
    root, _ = dataset
    with pytest.raises(UserError, match="no lmdb dataset"):
        TfhpLmdb(tmp_path / "missing")
    data = TfhpLmdb(root.parent)  # the folder holding lmdb/ works too
    with pytest.raises(UserError, match="unknown split 'dev'"):
        data.list_entries("dev")
    with pytest.raises(UserError, match="stats file not found"):
        load_stats(tmp_path / "stats_train.npz")

    _one_clip_lmdb(tmp_path, fmt.encode_value({"coef": {}, "audio": b""}))
    bare = TfhpLmdb(tmp_path)
    with pytest.raises(UserError, match="split file not found"):
        bare.list_entries("val")
    (tmp_path / "test.txt").write_text("\n")
    with pytest.raises(UserError, match="split 'test' is empty"):
        bare.list_entries("test")
    with pytest.raises(UserError, match="not a TFHP segment"):
        bare.read_clip("X/000")
    with pytest.raises(UserError, match="no clip of at least 200 frames"):
        DenoiserDataset(root, "test")


def test_denoiser_dataset(dataset):
    root, clips = dataset
    ds = DenoiserDataset(root, "train")
    assert ds.entries == ["P1/000", "P1/001", "P2/001"]  # P2/000 (120 frames) is too short
    assert ds.persons == ["P1", "P2"]
    torch.manual_seed(0)
    item = ds[2]
    assert item["audio"].shape == (200 * 640,) and item["audio"].dtype == torch.float32
    assert item["exp"].shape == (200, 50) and item["pose"].shape == (200, 6) and item["shape"].shape == (100,)
    assert item["person"] == "P2" and item["person_index"] == 1 and item["entry"] == "P2/001"
    start, clip = item["start"], clips["P2/001"]
    assert 0 <= start <= 5
    assert np.array_equal(item["exp"].numpy(), clip["exp"][start:start + 200])
    assert np.array_equal(item["shape"].numpy(), clip["shape"][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    batch = next(iter(loader))  # forked workers reopen the lmdb
    assert batch["audio"].shape == (3, 128000) and batch["exp"].shape == (3, 200, 50)
    assert batch["person"] == ["P1", "P1", "P2"]


def test_style_dataset(dataset):
    root, clips = dataset
    ds = StyleDataset(root, "train", n_motions=100)
    assert len(ds) == 4 and ds.persons == ["P1", "P2"]
    torch.manual_seed(1)
    for index in range(len(ds)):
        item = ds[index]
        assert item["exp"].shape == (2, 100, 50) and item["pose"].shape == (2, 100, 6)
        a, b = item["entries"].split()
        assert a.split("/")[0] == b.split("/")[0] == item["person"]
        assert ds.persons[item["person_index"]] == item["person"]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["exp"].shape == (4, 2, 100, 50)
