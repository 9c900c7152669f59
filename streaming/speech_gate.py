"""Speech gate: audio the voice-activity detector calls non-speech reaches the audio encoder as
digital silence.

Why: the models were trained on speech whose pauses are digital zeros, and read any faint noise
(room tone at -92 dBFS, a fan, hum) as speech, holding the mouth half open before, between and
after the words. Zeros give a shut mouth. The gate complements noise-robust models; it does not
replace them (docs/STREAMING.md "Silence and room tone" has both measured).

The detector is WebRTC's VAD (`webrtcvad`, C, microseconds per frame, adapts to the noise floor),
run on 10 ms frames (each less its mean: a DC offset is not speech) at aggressiveness 3. Its
single-frame decisions flicker in noise, so:

- a frame counts as speech when at least ``VOTE_NEED`` of the ``VOTE_SPAN`` frames centred on it
  do (a majority vote, 20 ms of look-ahead);
- the gate opens ``preroll_ms`` before speech (onsets are quiet: plosives, fricatives) and stays
  open ``hangover_ms`` after it (word endings, short pauses between words);
- gains ramp linearly over ``RAMP`` samples (no clicks a spectrogram would read as onsets).

Decisions are made per stream sample index, so the gate is the same however a source cuts its
audio into blocks; a frame's gain may still change while its look-ahead has not arrived, which the
streaming session allows for by re-gating the whole window every step."""

from __future__ import annotations

import numpy as np

from diffposetalk.units import SAMPLE_RATE

VAD_FRAME = SAMPLE_RATE // 100  # 10 ms, a length webrtcvad accepts at 16 kHz
VOTE_SPAN, VOTE_NEED = 5, 3
RAMP = VAD_FRAME  # samples over which a gain change ramps


def _webrtc_vad(aggressiveness: int):
    try:
        import webrtcvad
    except ImportError as e:  # a dependency of the project (pyproject.toml): say how to get it
        raise RuntimeError("the speech gate needs the 'webrtcvad-wheels' package (pip install -e .); "
                           "or turn the gate off (--no-speech-gate)") from e
    return webrtcvad.Vad(aggressiveness)


class SpeechGate:
    def __init__(self, aggressiveness: int = 3, preroll_ms: float = 60.0, hangover_ms: float = 200.0):
        self.vad = _webrtc_vad(aggressiveness)
        self.preroll = int(round(preroll_ms / 10))  # in VAD frames
        self.hangover = int(round(hangover_ms / 10))
        self._flags = bytearray()  # raw VAD decision of every complete frame since the stream began
        self._pending = np.zeros(0, np.float32)  # samples of the frame not yet complete
        self.speech_frames = 0

    @property
    def frames(self) -> int:
        return len(self._flags)

    def push(self, samples: np.ndarray) -> None:
        """Run the VAD over every 10 ms frame ``samples`` completes (float audio, full scale 1)."""
        samples = np.asarray(samples, np.float32)
        audio = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        n = len(audio) // VAD_FRAME
        frames = audio[:n * VAD_FRAME].reshape(n, VAD_FRAME)
        # each frame less its mean: a DC offset (cheap interfaces) would otherwise read as energy
        frames = frames - frames.mean(axis=1, keepdims=True)
        pcm = np.clip(frames * 32767.0, -32768, 32767).astype(np.int16)
        for i in range(n):
            speech = self.vad.is_speech(pcm[i].tobytes(), SAMPLE_RATE)
            self._flags.append(speech)
            self.speech_frames += speech
        self._pending = audio[n * VAD_FRAME:]

    def frame_gains(self, first: int, last: int, upto: int | None = None) -> np.ndarray:
        """Gate state (0/1) of VAD frames [first, last) from the decisions of frames before
        ``upto`` (default: all analysed); frames not analysed yet take the state of the newest
        analysed one (nothing is known about them: keep what the gate is doing)."""
        known = len(self._flags) if upto is None else max(min(len(self._flags), upto), 0)
        if not known:
            return np.zeros(last - first, np.float32)
        reach = VOTE_SPAN // 2 + max(self.preroll, self.hangover)
        lo, hi = max(min(first, known - 1) - reach, 0), min(max(last + reach, 0), known)
        # the common cases, exactly what the general path gives: every decision in reach speech
        # (the votes and their dilation are all open) or none (all shut) — most steps, and the
        # general path's dozen small array operations were a third of a step's audio bookkeeping
        if hi - lo >= VOTE_SPAN and first >= 0:
            if self._flags.find(0, lo, hi) < 0:
                return np.ones(last - first, np.float32)
            if self._flags.find(1, lo, hi) < 0:
                return np.zeros(last - first, np.float32)
        flags = np.frombuffer(bytes(self._flags[lo:hi]), np.uint8).astype(np.float32) if hi > lo else np.zeros(0, np.float32)
        votes = np.convolve(flags, np.ones(VOTE_SPAN, np.float32), mode="same") >= VOTE_NEED
        # dilate: frame j is open when speech lies within [j - hangover, j + preroll]
        width = self.preroll + self.hangover + 1
        open_ = np.convolve(votes.astype(np.float32), np.ones(width, np.float32))[self.preroll:self.preroll + len(votes)] > 0.5
        j = np.arange(first, last)
        out = open_[np.clip(j, 0, known - 1) - lo].astype(np.float32)
        out[j < 0] = 0.0
        return out

    def gains(self, start: int, end: int) -> np.ndarray | None:
        """Per-sample gain for stream samples [start, end), or None when the gate is open over all
        of them (the caller skips the multiply). Decided from the audio up to ``end`` only, so the
        result does not depend on how much more had been pushed when it was asked (a step that
        begins late, or a block that ends past the step's audio)."""
        first, last = start // VAD_FRAME - 1, -(-end // VAD_FRAME) + 1
        g = self.frame_gains(first, last, end // VAD_FRAME)
        if g.min() >= 1.0:
            return None
        if g.max() <= 0.0:
            return np.zeros(end - start, np.float32)
        per_sample = np.repeat(g, VAD_FRAME)
        # linear ramps: a moving average over RAMP samples of the step function
        c = np.concatenate([[0.0], np.cumsum(per_sample, dtype=np.float64)])
        smooth = (c[RAMP:] - c[:-RAMP]) / RAMP
        offset = start - first * VAD_FRAME - RAMP // 2
        return smooth[offset:offset + (end - start)].astype(np.float32)

    def apply(self, audio: np.ndarray, start: int) -> np.ndarray:
        """audio * gains for stream samples [start, start + len(audio))."""
        g = self.gains(start, start + len(audio))
        return audio if g is None else audio * g


def gate_clip(audio: np.ndarray, **kwargs) -> np.ndarray:
    """A whole clip through the gate (offline generation, checks)."""
    gate = SpeechGate(**kwargs)
    gate.push(audio)
    gate.push(np.zeros(VAD_FRAME, np.float32))  # the last partial frame is decided as silence
    return gate.apply(np.asarray(audio, np.float32), 0)
