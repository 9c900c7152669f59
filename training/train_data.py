"""In-memory training data for the trainers: whole clips of one split of an HDTF_TFHP lmdb, and
the window samplers the style encoder and the denoiser draw batches from.

Why in memory: on a CPU box the per-sample cost of lmdb reads + FLAC decoding is comparable to a
training step of the demo model, and a SynthTalk split (tens of minutes) fits easily in RAM. All
sampling goes through one numpy Generator so a run (and its --resume) is reproducible."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from diffposetalk.units import FRAME_SAMPLES
from training import tfhp_format as fmt

SPLITS = fmt.SPLITS


@dataclass
class Clip:
    entry: str  # "<person>/<video:03d>"
    person: str
    audio: np.ndarray  # (n * FRAME_SAMPLES,) float32 16 kHz, raw (not normalised)
    exp: np.ndarray  # (n, 50) raw FLAME
    pose: np.ndarray  # (n, 6)
    shape: np.ndarray  # (100,) first frame's shape

    @property
    def n_frames(self) -> int:
        return len(self.exp)


def find_split_file(lmdb_dir: Path, split: str) -> Path:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    for candidate in (lmdb_dir / f"{split}.txt", lmdb_dir.parent / f"{split}.txt"):
        if candidate.is_file():
            return candidate
    raise UserError(f"split file {split}.txt not found in {lmdb_dir} (or its parent)")


def resolve_lmdb_dir(path: str | Path) -> Path:
    """Accept the lmdb environment itself or a SynthTalk output folder holding ``lmdb/``."""
    path = Path(path)
    if (path / "data.mdb").is_file():
        return path
    if (path / "lmdb" / "data.mdb").is_file():
        return path / "lmdb"
    raise UserError(f"{path}: no lmdb dataset here (expected data.mdb, or lmdb/data.mdb)")


def find_stats(lmdb_dir: Path) -> Path:
    for candidate in (lmdb_dir / "stats_train.npz", lmdb_dir.parent / "stats_train.npz"):
        if candidate.is_file():
            return candidate
    raise UserError(f"stats_train.npz not found in {lmdb_dir} (or its parent)")


def _decode_flac(data: bytes, source: str) -> np.ndarray:
    try:
        audio, sr = fmt.decode_flac(data)
    except RuntimeError as exc:
        raise UserError(f"{source}: cannot decode audio ({exc})") from exc
    if sr != fmt.SAMPLE_RATE:
        raise UserError(f"{source}: audio at {sr} Hz, expected {fmt.SAMPLE_RATE}")
    return audio


def _read_clip(txn, entry: str) -> Clip:
    meta = txn.get(fmt.metadata_key(entry))
    if meta is None:
        raise UserError(f"lmdb entry {entry!r} (from the split file) not found in the dataset")
    n_frames = int(fmt.decode_value(meta, f"{entry}/metadata")["n_frames"])
    parts = {"exp": [], "pose": [], "shape": [], "audio": []}
    seg = 0
    while sum(len(p) for p in parts["exp"]) < n_frames:
        key = f"{entry}/{seg:03d}"
        raw = txn.get(fmt.segment_key(entry, seg))
        if raw is None:
            raise UserError(f"lmdb entry {key!r} missing (metadata says {n_frames} frames)")
        value = fmt.decode_value(raw, key)
        for k in ("exp", "pose", "shape"):
            parts[k].append(np.asarray(value["coef"][k], dtype=np.float32))
        parts["audio"].append(_decode_flac(value["audio"], key))
        seg += 1
    exp = np.concatenate(parts["exp"])[:n_frames]
    pose = np.concatenate(parts["pose"])[:n_frames]
    shape = np.concatenate(parts["shape"])[0]
    audio = np.concatenate(parts["audio"])[: n_frames * FRAME_SAMPLES]
    return Clip(entry, entry.split("/")[0], audio, exp, pose, shape)


def load_split(data: str | Path, split: str, max_clips: int | None = None) -> list[Clip]:
    """All clips of ``split`` (entries in file order)."""
    import lmdb

    lmdb_dir = resolve_lmdb_dir(data)
    entries = [ln.strip() for ln in find_split_file(lmdb_dir, split).read_text().splitlines() if ln.strip()]
    if not entries:
        raise UserError(f"split {split!r} of {lmdb_dir} is empty")
    if max_clips is not None:
        entries = entries[:max_clips]
    env = lmdb.open(str(lmdb_dir), readonly=True, lock=False, readahead=False, meminit=False)
    try:
        with env.begin() as txn:
            return [_read_clip(txn, e) for e in entries]
    finally:
        env.close()


def load_stats_np(data: str | Path) -> dict[str, np.ndarray]:
    from diffposetalk.model_dir import load_stats

    return load_stats(find_stats(resolve_lmdb_dir(data)))


# --- window sampling ---------------------------------------------------------------------------

class WindowBank:
    """Random windows of ``length`` frames from a list of clips, grouped by speaker."""

    def __init__(self, clips: list[Clip], length: int, what: str):
        self.length = length
        self.clips = [c for c in clips if c.n_frames >= length]
        if not self.clips:
            raise UserError(f"{what}: no clip has the {length} frames a training sample needs")
        self.people = sorted({c.person for c in self.clips})
        self.by_person = {p: [i for i, c in enumerate(self.clips) if c.person == p] for p in self.people}
        # clips drawn in proportion to their usable start positions: every window equally likely
        starts = np.array([c.n_frames - length + 1 for c in self.clips], dtype=np.float64)
        self.weights = starts / starts.sum()

    def window(self, rng: np.random.Generator, clip_idx: int) -> tuple[Clip, int]:
        clip = self.clips[clip_idx]
        return clip, int(rng.integers(0, clip.n_frames - self.length + 1))

    def random_window(self, rng: np.random.Generator) -> tuple[Clip, int]:
        return self.window(rng, int(rng.choice(len(self.clips), p=self.weights)))

    def person_window(self, rng: np.random.Generator, person: str) -> tuple[Clip, int]:
        idx = self.by_person[person]
        return self.window(rng, int(idx[rng.integers(len(idx))]))
