"""Writes clips in the HDTF_TFHP lmdb layout (see training.tfhp_format), the split files and
``stats_train.npz`` computed over the frames of train clips only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training import tfhp_format as fmt

# Dimensions whose train std falls below this did not vary (e.g. jaw y/z, or the shape of a
# single train speaker); they get std 1 so normalising neither divides by ~0 nor amplifies.
MIN_STD = 1e-6


class _RunningMoments:
    """Mean and variance over rows, merged chunk by chunk in float64 (Chan et al.)."""

    def __init__(self, dim: int):
        self.n, self.mean, self.m2 = 0, np.zeros(dim), np.zeros(dim)

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float64)
        n_b = len(rows)
        if n_b == 0:
            return
        mean_b = rows.mean(axis=0)
        m2_b = ((rows - mean_b) ** 2).sum(axis=0)
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + m2_b + delta ** 2 * self.n * n_b / n
        self.n = n

    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))


class TfhpWriter:
    """Usage: ``with TfhpWriter(dir) as w: w.add_clip(...)``; closing writes the split files
    and the stats. ``directory`` must not hold an lmdb yet."""

    def __init__(self, directory: str | Path, map_size: int = 1 << 30, seg_len: int = fmt.SEG_LEN):
        import lmdb

        self.directory = Path(directory)
        if (self.directory / "data.mdb").exists():
            raise FileExistsError(f"{self.directory} already holds an lmdb")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.seg_len = seg_len
        self._env = lmdb.open(str(self.directory), map_size=map_size, subdir=True)
        with self._env.begin(write=True) as txn:
            txn.put(b"metadata", fmt.encode_value({"seg_len": seg_len}))
        self.entries: dict[str, list[str]] = {split: [] for split in fmt.SPLITS}
        self._moments = {k: _RunningMoments(fmt.DIMS[k]) for k in fmt.STAT_KEYS}

    def add_clip(self, person: str, video: int, split: str, exp: np.ndarray, pose: np.ndarray,
                 shape: np.ndarray, audio: np.ndarray) -> str:
        """Store one clip; coefficient arrays are (n, 50)/(n, 6)/(n, 100), audio (n*640,) float
        in [-1, 1) or int16. Returns the entry name."""
        n = len(exp)
        if split not in self.entries:
            raise ValueError(f"unknown split {split!r}")
        if pose.shape != (n, 6) or exp.shape != (n, 50) or shape.shape != (n, 100):
            raise ValueError(f"coefficient shapes {exp.shape} {pose.shape} {shape.shape} for {n} frames")
        if len(audio) != n * fmt.FRAME_SAMPLES:
            raise ValueError(f"audio has {len(audio)} samples, expected {n} x {fmt.FRAME_SAMPLES}")
        entry = fmt.entry_name(person, video)
        coefs = {"shape": shape, "exp": exp, "pose": pose}
        with self._env.begin(write=True) as txn:
            txn.put(fmt.metadata_key(entry), fmt.encode_value({"n_frames": int(n)}))
            for seg, a in enumerate(range(0, n, self.seg_len)):
                b = min(a + self.seg_len, n)
                value = {"coef": {k: np.ascontiguousarray(v[a:b], dtype=np.float32) for k, v in coefs.items()},
                         "audio": fmt.encode_flac(audio[a * fmt.FRAME_SAMPLES:b * fmt.FRAME_SAMPLES])}
                txn.put(fmt.segment_key(entry, seg), fmt.encode_value(value))
        self.entries[split].append(entry)
        if split == "train":
            for k, v in coefs.items():
                self._moments[k].add(v)
        return entry

    def stats(self) -> dict[str, np.ndarray]:
        if self._moments["exp"].n == 0:
            raise ValueError("no train clips: stats_train.npz needs at least one")
        out = {}
        for k, m in self._moments.items():
            std = m.std()
            out[f"{k}_mean"] = m.mean.astype(np.float32)
            out[f"{k}_std"] = np.where(std < MIN_STD, 1.0, std).astype(np.float32)
        return out

    def close(self) -> None:
        if self._env is None:
            return
        self._env.sync()
        self._env.close()
        self._env = None
        for split, entries in self.entries.items():
            (self.directory / f"{split}.txt").write_text("".join(f"{e}\n" for e in entries))
        np.savez(self.directory / fmt.STATS_FILE, **self.stats())

    def __enter__(self) -> TfhpWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._env is not None:  # leave no split files/stats that look complete
            self._env.close()
            self._env = None
