"""Phoneme -> viseme -> articulation features, and the fixed linear map to FLAME expression.

Articulation features per viseme (before the speaker's mouth amplitude):
``jaw`` (radians of FLAME jaw x rotation, pose[3]), ``open`` (lip opening), ``closure``
(lips pressed together), ``round`` (pucker), ``spread`` (lips pulled sideways). The numbers
are the documented SynthTalk world (docs/SYNTHTALK.md), not measurements.
"""

from __future__ import annotations

import re

import numpy as np

FEATURES = ("jaw", "open", "closure", "round", "spread")

#: viseme -> (jaw, open, closure, round, spread)
VISEMES: dict[str, tuple[float, float, float, float, float]] = {
    "sil": (0.00, 0.00, 0.15, 0.0, 0.0),   # silence: mouth closed, lips lightly together
    "PBM": (0.01, 0.00, 1.00, 0.0, 0.0),   # p b m: lips pressed
    "FV":  (0.03, 0.10, 0.50, 0.0, 0.2),   # f v: lower lip to teeth
    "TH":  (0.05, 0.25, 0.00, 0.0, 0.2),   # T D: tongue between teeth
    "TDN": (0.04, 0.20, 0.00, 0.0, 0.2),   # t d n l s z: alveolar, also the default consonant
    "CH":  (0.05, 0.20, 0.00, 0.6, 0.0),   # S Z tS dZ: lips protruded
    "KG":  (0.07, 0.30, 0.00, 0.0, 0.0),   # k g N h: velar/glottal, jaw follows the vowel
    "R":   (0.05, 0.20, 0.00, 0.5, 0.0),   # r
    "W":   (0.03, 0.10, 0.10, 1.0, 0.0),   # w: tight rounding
    "Y":   (0.04, 0.15, 0.00, 0.0, 0.6),   # j
    "AA":  (0.25, 1.00, 0.00, 0.0, 0.1),   # open vowels a A: aa
    "AH":  (0.13, 0.50, 0.00, 0.0, 0.0),   # central vowels @ 3: V
    "EH":  (0.15, 0.60, 0.00, 0.0, 0.5),   # mid front vowels E e 3
    "IY":  (0.06, 0.30, 0.00, 0.0, 1.0),   # close front vowels i i: I
    "OH":  (0.17, 0.70, 0.00, 0.8, 0.0),   # mid back rounded 0 O: o
    "UW":  (0.07, 0.30, 0.00, 1.0, 0.0),   # close back rounded u: U
}

VOWEL_VISEMES = frozenset({"AA", "AH", "EH", "IY", "OH", "UW"})

# espeak-ng English phoneme mnemonics -> viseme; a diphthong is a list of (viseme, share of
# its duration).
_PHONEMES: dict[str, str | list[tuple[str, float]]] = {
    **{p: "PBM" for p in ("p", "b", "m")},
    **{p: "FV" for p in ("f", "v")},
    **{p: "TH" for p in ("T", "D")},
    **{p: "TDN" for p in ("t", "d", "n", "l", "s", "z", "t#", "t2", "n-", "l-", "?", "@L")},
    **{p: "CH" for p in ("S", "Z", "tS", "dZ")},
    **{p: "KG" for p in ("k", "g", "N", "h", "x")},
    **{p: "R" for p in ("r", "r-", "3")},
    "w": "W", "j": "Y",
    **{p: "AA" for p in ("a", "aa", "A", "A:", "a2")},
    **{p: "AH" for p in ("@", "@-", "@2", "@5", "3:", "V", "a#")},
    **{p: "EH" for p in ("E", "e", "E2", "E:")},
    **{p: "IY" for p in ("i", "i:", "I", "I#", "I2", "y")},
    **{p: "OH" for p in ("0", "O", "O:", "O2", "o")},
    **{p: "UW" for p in ("u:", "U", "u")},
    "aI": [("AA", 0.55), ("IY", 0.45)], "aU": [("AA", 0.55), ("UW", 0.45)],
    "eI": [("EH", 0.6), ("IY", 0.4)], "oU": [("OH", 0.6), ("UW", 0.4)],
    "OI": [("OH", 0.6), ("IY", 0.4)], "aI@": [("AA", 0.5), ("IY", 0.25), ("AH", 0.25)],
    "aI3": [("AA", 0.5), ("IY", 0.25), ("R", 0.25)],
    "A@": [("AA", 0.7), ("AH", 0.3)], "e@": [("EH", 0.7), ("AH", 0.3)],
    "i@": [("IY", 0.6), ("AH", 0.4)], "i@3": [("IY", 0.5), ("AH", 0.3), ("R", 0.2)],
    "U@": [("UW", 0.6), ("AH", 0.4)], "O@": [("OH", 0.7), ("AH", 0.3)],
    "o@": [("OH", 0.7), ("AH", 0.3)],
}


def is_pause(phoneme: str) -> bool:
    """espeak marks pauses with '_' ("_", "_:", "_!")."""
    return phoneme.startswith("_")


def visemes_of(phoneme: str) -> list[tuple[str, float]]:
    """The viseme sequence of one phoneme as (viseme, share of its duration).

    Unknown mnemonics fall back to the entry without stress/length marks, then to the
    neutral consonant TDN."""
    if is_pause(phoneme):
        return [("sil", 1.0)]
    for key in (phoneme, re.sub(r"[0-9#;:-]+$", "", phoneme)):
        entry = _PHONEMES.get(key)
        if entry is not None:
            return [(entry, 1.0)] if isinstance(entry, str) else list(entry)
    return [("TDN", 1.0)]


def is_vowel(phoneme: str) -> bool:
    return any(v in VOWEL_VISEMES for v, _ in visemes_of(phoneme))


# Fixed linear map from (open, closure, round, spread, smile) to FLAME exp[0:5].
# Row = expression coefficient, column = feature.
EXP_MAP = np.array([
    # open closure round spread smile
    [2.0, -0.4, 0.0, 0.0, 0.0],    # exp[0] mouth opening
    [-0.3, 1.5, 0.0, 0.0, 0.0],    # exp[1] lip closure / press
    [0.0, 0.0, 1.6, -0.4, 0.0],    # exp[2] rounding / pucker
    [0.0, 0.0, -0.3, 1.2, 0.3],    # exp[3] spreading
    [0.0, 0.0, 0.0, 0.2, 1.0],     # exp[4] smile
], dtype=np.float64)
