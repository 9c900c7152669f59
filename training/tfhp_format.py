"""The HDTF_TFHP lmdb layout DiffPoseTalk trains on: keys, value encoding, audio encoding.

One lmdb environment; values are pickled dicts:

- ``metadata`` -> ``{'seg_len': 100}``
- ``<person>/<video:03d>/metadata`` -> ``{'n_frames': int}``
- ``<person>/<video:03d>/<segment:03d>`` -> ``{'coef': {'shape': (n,100), 'exp': (n,50),
  'pose': (n,6)}, 'audio': bytes}``; audio = 16 kHz 16-bit mono FLAC of exactly n*640 samples.

Next to the lmdb files: ``train.txt``/``val.txt``/``test.txt`` (one ``<person>/<video:03d>`` a
line) and ``stats_train.npz``.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from diffposetalk import safe_pickle
from diffposetalk.units import FPS, FRAME_SAMPLES, SAMPLE_RATE  # noqa: F401  (the format's rates, above)

SEG_LEN = 100
SPLITS = ("train", "val", "test")
PICKLE_PROTOCOL = 4
STATS_FILE = "stats_train.npz"
STAT_KEYS = ("shape", "exp", "pose")
DIMS = {"shape": 100, "exp": 50, "pose": 6}


def _frombuffer_globals() -> dict[tuple[str, str], Any]:
    # Protocol-5 pickles of numpy arrays name numpy's _frombuffer (numpy 1.x and 2.x module
    # paths). It only builds an array from bytes, a dtype and a shape.
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.numeric import _frombuffer
    return {("numpy.core.numeric", "_frombuffer"): _frombuffer,
            ("numpy._core.numeric", "_frombuffer"): _frombuffer}


#: Globals an lmdb value may name: plain containers and numpy arrays/scalars, nothing else.
LMDB_VALUE_GLOBALS: dict[tuple[str, str], Any] = {**safe_pickle.PLAIN_DATA, **_frombuffer_globals()}


def entry_name(person: str, video: int) -> str:
    return f"{person}/{video:03d}"


def metadata_key(entry: str) -> bytes:
    return f"{entry}/metadata".encode()


def segment_key(entry: str, segment: int) -> bytes:
    return f"{entry}/{segment:03d}".encode()


def person_of(entry: str) -> str:
    return entry.split("/")[0]


def encode_value(value: dict) -> bytes:
    return pickle.dumps(value, protocol=PICKLE_PROTOCOL)


def decode_value(data: bytes, source: str) -> Any:
    """Unpickle an lmdb value with the allow-list (raises safe_pickle.UnsafePickleError)."""
    return safe_pickle.loads(data, source, allowed=LMDB_VALUE_GLOBALS)


def encode_flac(audio: np.ndarray) -> bytes:
    """float32 in [-1, 1) or int16 samples -> 16 kHz 16-bit mono FLAC bytes."""
    import soundfile as sf

    if audio.dtype != np.int16:
        audio = np.clip(np.round(np.asarray(audio, np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC bytes -> (float32 mono samples, sample rate)."""
    import soundfile as sf

    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return (audio.mean(axis=1) if audio.ndim == 2 else audio).astype(np.float32), int(rate)
