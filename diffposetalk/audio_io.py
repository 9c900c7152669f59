"""Reading audio files into the 16 kHz mono float32 the model expects.

soundfile (libsndfile) reads WAV/FLAC/OGG/MP3; soxr resamples with high quality (librosa, which
the reference uses, also resamples with soxr by default)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from diffposetalk.units import SAMPLE_RATE


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float32 by averaging channels."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2 and audio.shape[1] == 1:  # a mono block (the usual upstream): no reduction
        return audio[:, 0]
    return audio.mean(axis=1) if audio.ndim == 2 else audio


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    if rate == target:
        return np.asarray(audio, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(audio, dtype=np.float32), rate, target, quality="HQ").astype(np.float32)


def load_audio(path: str | Path, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any common audio file -> (n,) float32 mono at ``target_rate``. Clear errors for unreadable,
    empty or non-finite audio."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file not found: {path}")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as exc:  # libsndfile's messages are specific enough to pass on
        raise UserError(f"cannot read audio file {path}: {exc}") from exc
    audio = to_mono(audio)
    if audio.size == 0:
        raise UserError(f"audio file {path} is empty (0 samples)")
    if not np.all(np.isfinite(audio)):
        raise UserError(f"audio file {path} contains NaN or infinite samples")
    return resample(audio, rate, target_rate)


# --- streaming helpers: raw PCM blocks -> 16 kHz mono float32, block by block ---------------------

PCM_DTYPES = {"int16": 32768.0, "int32": 2147483648.0, "float32": 1.0}


def pcm_to_float(data: bytes | np.ndarray, dtype: str, channels: int) -> np.ndarray:
    """Interleaved PCM -> (frames, channels) float32. Bytes are read as ``dtype``; an array keeps its
    own dtype (int16/int32 scaled to [-1, 1), float taken as is)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        if dtype not in PCM_DTYPES:
            raise UserError(f"unsupported PCM sample type {dtype!r} (one of {', '.join(PCM_DTYPES)})")
        arr = np.frombuffer(data, dtype=dtype)
    else:
        arr = np.asarray(data)
    kind = "float32" if arr.dtype.kind == "f" else arr.dtype.name
    if kind not in PCM_DTYPES:
        raise UserError(f"unsupported PCM sample type {arr.dtype} (one of {', '.join(PCM_DTYPES)})")
    if arr.ndim == 1:
        if arr.size % channels:
            raise UserError(f"PCM block of {arr.size} samples is not a whole number of {channels}-channel frames")
        arr = arr.reshape(-1, channels)
    elif arr.ndim != 2 or arr.shape[1] != channels:
        raise UserError(f"PCM block has shape {arr.shape}, the source declared {channels} channel(s)")
    if kind == "float32":  # already full scale 1: one conversion, no division
        return arr.astype(np.float32, copy=False)
    return arr.astype(np.float32) / np.float32(PCM_DTYPES[kind])


class StreamResampler:
    """Downmix to mono and resample block by block (the output does not depend on how the input is
    cut into blocks); ``flush`` returns the filter's tail at the end.

    quality: "HQ" (soxr, as load_audio) holds back up to ~40 ms of audio and releases it in
    bursts; soxr's "LQ" still holds back ~20 ms (measured: 328 samples at 16 kHz from 44.1 kHz
    input in 20 ms blocks). Any hold costs a whole block: a step needs audio up to a frame
    boundary, which a 20 ms upstream block ends on, so the held tail only comes with the next
    block. "live" (what live sources use) holds back nothing: libsamplerate's ``sinc_medium``
    (band-limited sinc, 90 % of the band, 121 dB SNR) primed with zeros, so that after n input
    samples n x ratio output samples are out; the price is that the output's content lags by the
    filter's half-length (~3 ms, a 13th of a frame) instead of its release. An integer factor
    (48, 32, 96 kHz) takes :class:`FirDecimator` instead: the same no-hold behaviour (~2 ms of
    delay, 70 dB stop band) at 0.035 ms per 20 ms block of 48 kHz against sinc_medium's 0.24 ms —
    the server resamples every upstream block in its event loop."""

    def __init__(self, rate: int, target: int = SAMPLE_RATE, quality: str = "HQ"):
        if rate <= 0:
            raise UserError(f"sample rate must be positive, got {rate}")
        self.rate, self.target = rate, target
        self._soxr = self._src = self._fir = None
        if rate == target:
            return
        if quality == "live" and rate % target == 0:
            # an integer factor (48 kHz, 32 kHz, 96 kHz: what browsers and interfaces send): a
            # polyphase FIR decimator in numpy, ~10x cheaper than sinc_medium (0.24 ms per 20 ms
            # block of 48 kHz); the server resamples every upstream block in its event loop
            self._fir = FirDecimator(rate // target, rate)
            return
        if quality == "live":
            import samplerate

            self._ratio = target / rate
            self._src = samplerate.Resampler("sinc_medium", channels=1)
            # 10 ms of zeros fill the filter (it holds ~3 ms); their output is dropped, so from here
            # on every input sample comes out at once, its content ~3 ms late
            self._src.process(np.zeros(rate // 100, np.float32), self._ratio)
            self._in = self._out = 0  # real samples in and out, to cut the flushed tail to length
        else:
            import soxr

            self._soxr = soxr.ResampleStream(rate, target, 1, dtype="float32", quality=quality)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        mono = np.ascontiguousarray(to_mono(block), dtype=np.float32)
        if self._fir is not None:
            return self._fir(mono)
        if self._src is not None:
            out = self._src.process(mono, self._ratio).astype(np.float32, copy=False)
            self._in, self._out = self._in + len(mono), self._out + len(out)
            return out
        return mono if self._soxr is None else self._soxr.resample_chunk(mono)

    def flush(self) -> np.ndarray:
        if self._fir is not None:
            return self._fir.flush()
        if self._src is not None:  # push zeros through the filter for its tail, cut to the input's length
            want = max(0, round(self._in * self._ratio) - self._out)
            tail = self._src.process(np.zeros(round(want / self._ratio) + 256, np.float32), self._ratio,
                                     end_of_input=True)
            self._out += want
            return tail[:want].astype(np.float32)
        if self._soxr is None:
            return np.zeros(0, np.float32)
        return self._soxr.resample_chunk(np.zeros(0, np.float32), last=True)


class FirDecimator:
    """Streaming decimation by an integer ``factor``: a linear-phase low-pass FIR (Kaiser-windowed
    sinc, pass band to 7 kHz of the 8 kHz Nyquist at the 16 kHz output, ~70 dB stop band) primed
    with zeros, evaluated only at the kept samples. After n input samples (a multiple of the factor)
    n / factor output samples are out — nothing held back — their content late by the filter's
    half-length (~2 ms); the output does not depend on how the input is cut into blocks."""

    def __init__(self, factor: int, rate: int, stop_db: float = 70.0):
        if factor < 2:
            raise ValueError("a decimator needs a factor of at least 2")
        self.factor = factor
        out_rate = rate / factor
        edge, stop = 0.4375 * out_rate, 0.5 * out_rate  # 7 / 8 kHz at 16 kHz out
        width = (stop - edge) / rate  # transition, in cycles per input sample
        n = int(np.ceil((stop_db - 7.95) / (2.285 * 2 * np.pi * width))) | 1  # Kaiser's estimate, odd
        beta = 0.1102 * (stop_db - 8.7)
        t = np.arange(n) - (n - 1) / 2
        cutoff = (edge + stop) / 2 / rate
        h = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(n, beta)
        # reversed (each output is a dot over its window), padded with zero taps to a whole number
        # of phases: the filter runs as ``factor`` short correlations over every factor-th sample
        taps = np.zeros(-(-n // factor) * factor, np.float32)
        taps[:n] = (h / h.sum())[::-1]
        self.taps = taps
        self._phases = [np.ascontiguousarray(taps[p::factor]) for p in range(factor)]
        self._buf = np.zeros(len(taps) - 1, np.float32)  # the primed history, then what no output used yet
        self._in = self._out = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        self._in += len(x)
        buf = np.concatenate([self._buf, x])
        n, m = len(self.taps), self.factor
        count = (len(buf) - n) // m + 1 if len(buf) >= n else 0
        if count <= 0:
            self._buf = buf
            return np.zeros(0, np.float32)
        out = np.zeros(count, np.float32)
        for p, taps in enumerate(self._phases):  # out[j] = sum_p sum_q buf[(j + q) m + p] taps[q m + p]
            out += np.correlate(buf[p::m][:count + len(taps) - 1], taps, "valid")
        self._buf = buf[count * m:].copy()
        self._out += count
        return out.astype(np.float32, copy=False)

    def flush(self) -> np.ndarray:
        """The outputs still owed for the input so far (zeros pushed through)."""
        want = max(0, round(self._in / self.factor) - self._out)
        if not want:
            return np.zeros(0, np.float32)
        return self(np.zeros(want * self.factor, np.float32))[:want]
