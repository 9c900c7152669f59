"""espeak-ng speech synthesis through its C library (ctypes), with phoneme timings.

The library is initialised once per process in AUDIO_OUTPUT_SYNCHRONOUS mode with phoneme
events. espeak-ng 1.51 keeps synthesiser state (pitch flutter, glottal phase, Klatt filters)
from one message to the next and cannot be re-initialised safely, so the same text gives
slightly different audio depending on what was spoken before. To make every utterance
reproducible, :func:`synthesize` forks the process and speaks in the child, which starts from
the never-used state the parent keeps; the child sends the samples and events back over a
pipe. A fork costs a few milliseconds; espeak itself speaks ~100x faster than real time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import struct
import threading
from dataclasses import dataclass, field

import numpy as np

from diffposetalk.audio_io import resample
from diffposetalk.errors import UserError
from diffposetalk.units import SAMPLE_RATE

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exit() when the data is missing
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED, _EVENT_WORD, _EVENT_SENTENCE, _EVENT_END, _EVENT_PHONEME = 0, 1, 2, 5, 7
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_PARAM_PUNCTUATION, _PARAM_CAPITALS, _PARAM_WORDGAP = 5, 6, 7

RATE_MIN, RATE_MAX = 80, 450

_LIBRARY_NAMES = ("libespeak-ng.so.1", "libespeak-ng.so", "libespeak-ng.1.dylib")


class EspeakUnavailable(UserError):
    """The espeak-ng C library or its voice data cannot be loaded."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: ``name`` is a language voice with an optional variant
    ("en-us", "en", "en+f3", "en-us+klatt2"); rate in words per minute; pitch and range 0..100."""

    name: str = "en-us"
    rate: int = 175
    pitch: int = 50
    range: int = 50


@dataclass
class Utterance:
    """Speech at 16 kHz with its timing. Times are seconds from the start of ``audio``.

    ``phonemes``: (espeak phoneme mnemonic, start) in order; a phoneme lasts until the next
    start, the last one until ``duration``. Pause phonemes are "_" variants ("_", "_:", "_!").
    ``words``: (word text, start). ``sentences``: sentence start times. ``clause_ends``: times
    of END events (ends of clauses and sentences).
    """

    audio: np.ndarray
    phonemes: list[tuple[str, float]] = field(default_factory=list)
    words: list[tuple[str, float]] = field(default_factory=list)
    sentences: list[float] = field(default_factory=list)
    clause_ends: list[float] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


class _Engine:
    """One initialised espeak-ng library per process; synthesis happens in forked children."""

    def __init__(self):
        self._lib = self._load_library()
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
                                           _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakUnavailable(
                "espeak-ng could not be initialised (voice data missing?); "
                "install it with: apt-get install espeak-ng libespeak-ng1")
        self.native_rate = int(rate)
        self._samples: list[bytes] = []
        self._events: list[tuple] = []
        self._callback = _SynthCallback(self._on_synth)  # keep a reference: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()

    @staticmethod
    def _load_library() -> ctypes.CDLL:
        names = list(_LIBRARY_NAMES)
        found = ctypes.util.find_library("espeak-ng")
        if found:
            names.append(found)
        for name in names:
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                         ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
            return lib
        raise EspeakUnavailable(
            "the espeak-ng C library (libespeak-ng.so.1) was not found; "
            "install it with: apt-get install espeak-ng libespeak-ng1")

    def _on_synth(self, wav, n_samples, events) -> int:
        if wav and n_samples > 0:
            self._samples.append(ctypes.string_at(wav, n_samples * 2))
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            name = ev.id.string.decode("utf-8", "replace") if ev.type == _EVENT_PHONEME else ""
            self._events.append((ev.type, ev.audio_position, ev.text_position, ev.length, name))
            i += 1
        return 0

    def speak_here(self, text: str, voice: Voice) -> tuple[bytes, list[tuple]]:
        """Synthesise in this process (changes the engine's state). Returns raw int16 bytes at
        the native rate and the event tuples (type, ms, text_position, length, phoneme)."""
        self._samples, self._events = [], []
        if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice.name!r}")
        # Every parameter explicitly: the output must not depend on earlier calls.
        for param, value in ((_PARAM_RATE, int(np.clip(voice.rate, RATE_MIN, RATE_MAX))),
                             (_PARAM_VOLUME, 100),
                             (_PARAM_PITCH, int(np.clip(voice.pitch, 0, 100))),
                             (_PARAM_RANGE, int(np.clip(voice.range, 0, 100))),
                             (_PARAM_PUNCTUATION, 0), (_PARAM_CAPITALS, 0), (_PARAM_WORDGAP, 0)):
            self._lib.espeak_SetParameter(param, value, 0)
        data = text.encode("utf-8") + b"\0"
        err = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with error {err}")
        return b"".join(self._samples), self._events

    def speak_isolated(self, text: str, voice: Voice, seed: int) -> tuple[bytes, list[tuple]]:
        """Synthesise in a forked child so that this process's engine stays unused."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: speak, send, exit without running any Python cleanup
            status = 1
            try:
                os.close(read_fd)
                _libc_srand(seed)  # espeak 1.51 draws noise with rand()
                try:
                    samples, events = self.speak_here(text, voice)
                    header = json.dumps({"events": events}).encode()
                except Exception as exc:  # reported to the parent
                    samples, header = b"", json.dumps({"error": str(exc)}).encode()
                with os.fdopen(write_fd, "wb") as pipe:
                    pipe.write(struct.pack("<QQ", len(header), len(samples)) + header + samples)
                status = 0
            finally:
                os._exit(status)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            payload = pipe.read()
        _, exit_status = os.waitpid(pid, 0)
        if exit_status != 0 or len(payload) < 16:
            raise RuntimeError(f"espeak-ng child process failed (status {exit_status}) for {text!r}")
        n_header, n_samples = struct.unpack("<QQ", payload[:16])
        header = json.loads(payload[16:16 + n_header])
        if "error" in header:
            raise ValueError(header["error"])
        return payload[16 + n_header:16 + n_header + n_samples], [tuple(e) for e in header["events"]]


def _libc_srand(seed: int) -> None:
    ctypes.CDLL(None).srand(ctypes.c_uint(seed & 0xFFFFFFFF))


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def _get_engine() -> _Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _Engine()
        return _engine


def require() -> None:
    """Load espeak-ng now; raises EspeakUnavailable (a UserError with the install hint)."""
    _get_engine()


def available() -> bool:
    """True when the espeak-ng library and its data can be loaded."""
    try:
        require()
    except EspeakUnavailable:
        return False
    return True


def synthesize(text: str, voice: Voice = Voice(), seed: int = 0) -> Utterance:
    """Speak ``text`` with ``voice``. Same text, voice and seed -> identical audio and timings,
    whatever was synthesised before in this process."""
    engine = _get_engine()
    with engine.lock:
        raw, events = engine.speak_isolated(text, voice, seed)
    native = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    audio = resample(native, engine.native_rate, SAMPLE_RATE) if native.size else native
    utt = Utterance(audio=np.ascontiguousarray(audio, dtype=np.float32))
    text_bytes = text.encode("utf-8")
    for kind, ms, text_pos, length, name in events:
        t = min(ms / 1000.0, utt.duration)
        if kind == _EVENT_PHONEME and name:
            utt.phonemes.append((name, t))
        elif kind == _EVENT_WORD:
            # text_position is 1-based, in characters (bytes for ASCII text)
            word = text_bytes[text_pos - 1:text_pos - 1 + length].decode("utf-8", "replace")
            utt.words.append((word, t))
        elif kind == _EVENT_SENTENCE:
            utt.sentences.append(t)
        elif kind == _EVENT_END:
            utt.clause_ends.append(t)
    return utt
