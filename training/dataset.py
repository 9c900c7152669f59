"""Reading HDTF_TFHP-format lmdb datasets (real TFHP data or SynthTalk) for training.

:class:`TfhpLmdb` reads clips; :class:`DenoiserDataset` and :class:`StyleDataset` are the torch
datasets the denoiser and style-encoder trainers sample from. Values are unpickled with an
allow-list (plain containers and numpy arrays only): a value naming anything else raises
``UnsafePickleError``. Returned motion is raw FLAME coefficients (not normalised; see
:func:`load_stats`) and audio is raw 16 kHz float32 (the trainer normalises it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from diffposetalk.errors import UserError
from training import tfhp_format as fmt


def load_stats(path: str | Path) -> dict[str, np.ndarray]:
    """``stats_train.npz`` -> {'shape_mean': (100,), 'shape_std', 'exp_mean': (50,), 'exp_std',
    'pose_mean': (6,), 'pose_std'} as float32."""
    path = Path(path)
    if path.is_dir():
        path = path / fmt.STATS_FILE
    if not path.is_file():
        raise UserError(f"stats file not found: {path}")
    with np.load(path, allow_pickle=False) as npz:
        stats = {}
        for key in fmt.STAT_KEYS:
            for suffix in ("mean", "std"):
                name = f"{key}_{suffix}"
                if name not in npz.files:
                    raise UserError(f"{path}: missing '{name}' (has {sorted(npz.files)})")
                stats[name] = np.asarray(npz[name], np.float32).reshape(-1)
                if stats[name].shape != (fmt.DIMS[key],):
                    raise UserError(f"{path}: '{name}' has shape {stats[name].shape}, "
                                    f"expected ({fmt.DIMS[key]},)")
    return stats


def _resolve_lmdb_dir(path: Path) -> Path:
    """Accept the lmdb directory itself or a world/dataset folder holding ``lmdb/``."""
    for candidate in (path, path / "lmdb"):
        if (candidate / "data.mdb").is_file():
            return candidate
    raise UserError(f"no lmdb dataset at {path} (expected {path}/data.mdb or {path}/lmdb/data.mdb)")


# py-lmdb allows one open environment per path and process: readers of the same path share it.
_ENVIRONMENTS: dict[tuple[str, int], object] = {}


def _environment(path: Path):
    key = (str(path.resolve()), os.getpid())  # a forked DataLoader worker opens its own
    if key not in _ENVIRONMENTS:
        import lmdb

        for inherited in [k for k in _ENVIRONMENTS if k[0] == key[0]]:
            # py-lmdb refuses a second open of a path in one process, and an environment
            # must not be used across fork: close the parent's copy here (only in this process).
            _ENVIRONMENTS.pop(inherited).close()
        _ENVIRONMENTS[key] = lmdb.open(key[0], readonly=True, lock=False, readahead=False,
                                       meminit=False, max_readers=256)
    return _ENVIRONMENTS[key]


class TfhpLmdb:
    """Read-only access to one HDTF_TFHP lmdb and its split files.

    Safe to use from DataLoader workers: each process opens the lmdb environment itself."""

    def __init__(self, path: str | Path):
        self.path = _resolve_lmdb_dir(Path(path))
        meta = self._get(b"metadata")
        if meta is None:
            raise UserError(f"{self.path}: not an HDTF_TFHP lmdb (no 'metadata' key)")
        self.seg_len = int(meta["seg_len"])
        self._n_frames: dict[str, int] = {}

    @property
    def stats_path(self) -> Path:
        return self.path / fmt.STATS_FILE

    def _get(self, key: bytes):
        with _environment(self.path).begin(write=False) as txn:
            data = txn.get(key)
        return None if data is None else fmt.decode_value(data, f"{self.path}[{key.decode()}]")

    def raw_items(self) -> list[tuple[bytes, bytes]]:
        """Every (key, pickled value) without unpickling, in key order (inspection, tests)."""
        with _environment(self.path).begin(write=False) as txn:
            return list(txn.cursor())

    def list_entries(self, split: str) -> list[str]:
        """``<person>/<video:03d>`` entries of a split, in file order."""
        if split not in fmt.SPLITS:
            raise UserError(f"unknown split {split!r} (choose one of {', '.join(fmt.SPLITS)})")
        split_file = self.path / f"{split}.txt"
        if not split_file.is_file():
            raise UserError(f"split file not found: {split_file}")
        entries = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not entries:
            raise UserError(f"split '{split}' is empty ({split_file})")
        return entries

    def persons(self, split: str) -> dict[str, list[str]]:
        """person -> that person's entries in the split."""
        grouped: dict[str, list[str]] = {}
        for entry in self.list_entries(split):
            grouped.setdefault(fmt.person_of(entry), []).append(entry)
        return grouped

    def n_frames(self, entry: str) -> int:
        if entry not in self._n_frames:
            meta = self._get(fmt.metadata_key(entry))
            if meta is None:
                raise UserError(f"{self.path}: entry '{entry}' has no metadata (listed in a split file?)")
            self._n_frames[entry] = int(meta["n_frames"])
        return self._n_frames[entry]

    def read_window(self, entry: str, start: int, length: int) -> dict[str, np.ndarray]:
        """Frames [start, start+length) of a clip, reading only the segments they touch:
        audio (length*640,) float32, exp (length, 50), pose (length, 6), shape (length, 100)."""
        n = self.n_frames(entry)
        if start < 0 or length <= 0 or start + length > n:
            raise ValueError(f"window [{start}, {start + length}) outside {entry} ({n} frames)")
        first, last = start // self.seg_len, (start + length - 1) // self.seg_len
        parts = [self._read_segment(entry, s) for s in range(first, last + 1)]
        offset = start - first * self.seg_len
        out = {k: np.concatenate([p[k] for p in parts])[offset:offset + length] for k in fmt.STAT_KEYS}
        spf = fmt.FRAME_SAMPLES
        out["audio"] = np.concatenate([p["audio"] for p in parts])[offset * spf:(offset + length) * spf]
        return out

    def read_clip(self, entry: str) -> dict[str, np.ndarray]:
        """The whole clip: audio (n*640,) float32, exp (n, 50), pose (n, 6), shape (n, 100)."""
        return self.read_window(entry, 0, self.n_frames(entry))

    def _read_segment(self, entry: str, segment: int) -> dict[str, np.ndarray]:
        key = fmt.segment_key(entry, segment)
        value = self._get(key)
        where = f"{self.path}[{key.decode()}]"
        if value is None:
            raise UserError(f"{where}: segment missing")
        try:
            coef, flac = value["coef"], value["audio"]
            out = {k: np.asarray(coef[k], np.float32) for k in fmt.STAT_KEYS}
        except (KeyError, TypeError) as exc:
            raise UserError(f"{where}: not a TFHP segment ({exc})") from exc
        n = len(out["exp"])
        for k in fmt.STAT_KEYS:
            if out[k].shape != (n, fmt.DIMS[k]):
                raise UserError(f"{where}: coef '{k}' has shape {out[k].shape}, expected ({n}, {fmt.DIMS[k]})")
        audio, rate = fmt.decode_flac(bytes(flac))
        if rate != fmt.SAMPLE_RATE or len(audio) != n * fmt.FRAME_SAMPLES:
            raise UserError(f"{where}: audio is {len(audio)} samples at {rate} Hz, "
                            f"expected {n * fmt.FRAME_SAMPLES} at {fmt.SAMPLE_RATE} Hz")
        out["audio"] = audio
        return out


def _open(data: TfhpLmdb | str | Path) -> TfhpLmdb:
    return data if isinstance(data, TfhpLmdb) else TfhpLmdb(data)


def _random_start(n_frames: int, length: int) -> int:
    # torch's generator: DataLoader seeds it differently in every worker
    return int(torch.randint(0, n_frames - length + 1, (1,)).item())


class DenoiserDataset(Dataset):
    """Denoiser training samples: two consecutive ``n_motions``-frame windows of one clip.

    One item per clip of the split that is at least ``2 * n_motions`` frames long (shorter
    clips are skipped); each access draws a new random start frame. Items are dicts of:
    ``audio`` (2*n_motions*640,) float32, ``exp`` (2*n_motions, 50), ``pose`` (2*n_motions, 6),
    ``shape`` (100,) (first frame of the window), ``person`` (str), ``person_index`` (int,
    index into ``self.persons``), ``entry`` (str), ``start`` (int)."""

    def __init__(self, data: TfhpLmdb | str | Path, split: str, n_motions: int = 100):
        self.data = _open(data)
        self.split, self.n_motions = split, n_motions
        self.window = 2 * n_motions
        self.entries = [e for e in self.data.list_entries(split) if self.data.n_frames(e) >= self.window]
        if not self.entries:
            raise UserError(f"split '{split}' of {self.data.path} has no clip of at least "
                            f"{self.window} frames ({self.window / fmt.FPS:g} s)")
        self.persons = sorted({fmt.person_of(e) for e in self.entries})
        self._person_index = {p: i for i, p in enumerate(self.persons)}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        start = _random_start(self.data.n_frames(entry), self.window)
        w = self.data.read_window(entry, start, self.window)
        person = fmt.person_of(entry)
        return {"audio": torch.from_numpy(w["audio"]), "exp": torch.from_numpy(w["exp"]),
                "pose": torch.from_numpy(w["pose"]), "shape": torch.from_numpy(w["shape"][0].copy()),
                "person": person, "person_index": self._person_index[person],
                "entry": entry, "start": start}


class StyleDataset(Dataset):
    """Style-encoder training samples: two ``n_motions``-frame windows of the same person.

    One item per clip of the split with at least ``n_motions`` frames. The first window comes
    from that clip, the second from a clip of the same person drawn uniformly (possibly the
    same clip); start frames are random. Items are dicts of: ``exp`` (2, n_motions, 50),
    ``pose`` (2, n_motions, 6), ``person`` (str), ``person_index`` (int), ``entries``
    ("<entry a> <entry b>")."""

    def __init__(self, data: TfhpLmdb | str | Path, split: str, n_motions: int = 100):
        self.data = _open(data)
        self.split, self.n_motions = split, n_motions
        self.entries = [e for e in self.data.list_entries(split) if self.data.n_frames(e) >= n_motions]
        if not self.entries:
            raise UserError(f"split '{split}' of {self.data.path} has no clip of at least "
                            f"{n_motions} frames ({n_motions / fmt.FPS:g} s)")
        self.by_person: dict[str, list[str]] = {}
        for e in self.entries:
            self.by_person.setdefault(fmt.person_of(e), []).append(e)
        self.persons = sorted(self.by_person)
        self._person_index = {p: i for i, p in enumerate(self.persons)}

    def __len__(self) -> int:
        return len(self.entries)

    def _window(self, entry: str) -> dict[str, np.ndarray]:
        return self.data.read_window(entry, _random_start(self.data.n_frames(entry), self.n_motions),
                                     self.n_motions)

    def __getitem__(self, index: int) -> dict:
        entry_a = self.entries[index]
        person = fmt.person_of(entry_a)
        same_person = self.by_person[person]
        entry_b = same_person[int(torch.randint(0, len(same_person), (1,)).item())]
        a, b = self._window(entry_a), self._window(entry_b)
        return {"exp": torch.from_numpy(np.stack([a["exp"], b["exp"]])),
                "pose": torch.from_numpy(np.stack([a["pose"], b["pose"]])),
                "person": person, "person_index": self._person_index[person],
                "entries": f"{entry_a} {entry_b}"}
