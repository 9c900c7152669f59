"""The streaming session: 16 kHz audio in, 25 fps FLAME motion frames out, step by step.

Each step (see streaming/windowing.py for the arithmetic):

1. running-normalise the fixed-length audio window (context + hop + lookahead) and extract its
   features — the audio encoder always sees the same shape; with a streaming audio encoder
   (diffposetalk/stream_encoder.py) only the samples not encoded yet are normalised and pushed,
   and the encoder's carried state stands in for the context;
2. build the denoiser window: the last ``n_prev`` frames already emitted (motion and the audio
   features they were made from) as the "previous" condition, then ``hop + lookahead`` frames of
   real audio features (indicator 1) and padding up to the model's window (indicator 0, features
   of silence computed once at start-up) — the same padded-window form the reference uses for
   its last window;
3. sample the window from the session's fixed x_T and emit only the ``hop`` frames; the
   lookahead frames are regenerated next step with more audio behind them, and the first emitted
   frames are crossfaded from their earlier (lookahead) prediction so step boundaries stay smooth.

The session does no I/O and no threading: a caller feeds it blocks (:meth:`feed`) and ends the
stream (:meth:`finish`); streaming/runner.py connects it to an audio source.

Engines shared with other sessions (streaming/scheduler.py) read :attr:`StreamSession.step_arrival`
for the step's deadline and may shed a step under overload (``StepShed``): the session then emits
the previous step's lookahead prediction of those frames (held last frame beyond it), continues
its conditions from them, and flags the frames (``Frame.shed``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diffposetalk.units import FPS, FRAME_SAMPLES, SAMPLE_RATE
from streaming.conditioning import AudioConditioner, RunningNormalizer
from streaming.eyes import ProceduralEyes
from streaming.motion import AudioFeatureEngine, CoefDecoder, MotionEngine, StepShed
from streaming.ring import RingBuffer
from streaming.speech_gate import SpeechGate
from streaming.style import StyleFader
from streaming.windowing import WindowSpec, frames_in

AUDIO_ENCODERS = ("auto", "stream", "window")
MAX_CHUNK = 4 * SAMPLE_RATE  # a feed() longer than this is processed in pieces (flat memory)


@dataclass
class StreamConfig:
    hop_ms: int = 80
    lookahead_ms: int = 80
    context_ms: int = 1600
    regen_ms: int = 0  # emitted audio each window generates again first (streaming/windowing.py)
    norm_tau_s: float = 8.0  # running audio statistics time constant
    norm_floor: float = 3e-3  # smallest std the audio is divided by (about -50 dBFS)
    style_fade_s: float = 0.5
    seam_blend: bool = True  # crossfade step boundaries with the previous lookahead (see _blend_seam)
    speech_gate: bool = True  # non-speech audio reaches the encoder as silence (streaming/speech_gate.py)
    eyes: bool = False
    seed: int = 0
    # audio encoder: "auto" (the model's streaming encoder when it has one, else HuBERT over the
    # window), "stream" or "window"
    audio_encoder: str = "auto"
    # with regen: a step that begins with the audio of more frames already in (the session is
    # behind, e.g. on an overloaded server) emits up to ``regen`` more of them and regenerates as
    # many fewer, so one network pass serves two frames until it has caught up. Off by default:
    # a file fed faster than real time would then give motion that depends on its block size.
    catch_up: bool = False

    def catch_up_frames(self) -> int:
        """Frames a catching-up step may emit beyond the hop (0: it never catches up)."""
        return self.spec().regen if self.catch_up else 0

    def uses_stream_encoder(self, has_stream_encoder: bool) -> bool:
        from diffposetalk.errors import UserError

        if self.audio_encoder not in AUDIO_ENCODERS:
            raise UserError(f"audio encoder {self.audio_encoder!r}: one of {', '.join(AUDIO_ENCODERS)}")
        if self.audio_encoder == "stream" and not has_stream_encoder:
            raise UserError("--audio-encoder stream: this model has no streaming audio encoder "
                            "(add one with `dpt-live distill-encoder`)")
        return self.audio_encoder == "stream" or (self.audio_encoder == "auto" and has_stream_encoder)

    def spec(self) -> WindowSpec:
        return WindowSpec.from_ms(self.hop_ms, self.lookahead_ms, self.context_ms, self.regen_ms)


@dataclass
class Frame:
    index: int  # 0-based frame number in the stream
    step: int  # the step that emitted it
    audio_time: float  # seconds from stream start to the centre of its 40 ms of audio
    arrival_time: float  # session clock (s) when all of its audio had arrived
    emit_time: float  # session clock (s) when it was emitted
    motion: np.ndarray  # (D,) normalised network motion vector
    exp: np.ndarray  # (50,) FLAME expression
    pose: np.ndarray  # (6,) global rotation (3) + jaw (3), axis-angle
    eyes: np.ndarray | None  # (4,) see streaming/eyes.py, or None when eyes are off
    # overload shedding (streaming/scheduler.py): None = computed in full; "steps" = sampled with
    # fewer denoiser steps; "dropped" = the step's network work was dropped, the frame is the
    # previous step's prediction of it (or the last frame held)
    shed: str | None = None

    @property
    def latency(self) -> float:
        return self.emit_time - self.arrival_time


@dataclass
class StepInfo:
    step: int
    first_frame: int
    n_frames: int
    compute_s: float  # features + denoising + decoding of this step
    features_s: float  # of which the audio encoder
    shed: str | None = None  # as Frame.shed


@dataclass
class _Step:
    """A step between its bookkeeping and its frames."""

    first: int  # its first frame
    end: int  # the audio it needs (samples)
    n_real: int  # frames with real audio in its window from its first frame on
    n_emit: int  # frames it emits
    t_start: float  # session clock when it began
    chunk: np.ndarray | None  # streaming encoder: its new samples, normalised and gated
    regen: int = 0  # emitted frames its window generates again before ``first``
    offset: int = 0  # where ``first`` is in its audio window (HuBERT over the window: context + hop + lookahead)

    @property
    def window_first(self) -> int:
        return self.first - self.regen


class StreamSession:
    def __init__(self, audio: AudioFeatureEngine, motion: MotionEngine, decoder: CoefDecoder,
                 config: StreamConfig | None = None, style: np.ndarray | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 on_step: Callable[[StepInfo], None] | None = None):
        self.config = config or StreamConfig()
        self.spec = spec = self.config.spec()
        spec.check_model(motion.n_motions)
        if audio.window_samples != spec.window_samples:
            raise ValueError(f"audio engine is fixed to {audio.window_samples} samples, the window "
                             f"needs {spec.window_samples}")
        self.audio, self.motion, self.decoder = audio, motion, decoder
        self.clock, self.on_step = clock, on_step
        self.catch_up = self.config.catch_up_frames()
        self.t0 = clock()
        self.start_wall = time.time()  # epoch seconds of session clock 0 (to align with other clocks)
        self.ring = RingBuffer(spec.window_samples + MAX_CHUNK)
        self.conditioner = AudioConditioner()
        self.normalizer = RunningNormalizer(self.config.norm_tau_s, self.config.norm_floor)
        self.gate = SpeechGate() if self.config.speech_gate else None
        self.style = StyleFader(style, motion.null_style, self.config.style_fade_s * FPS)
        self.eyes = ProceduralEyes(self.config.seed + 1) if self.config.eyes else None
        # "previous" condition: starts as the model's learned first-window condition, then holds the
        # last n_prev emitted frames and their audio features (and the ``regen`` emitted after them,
        # which a window generates again)
        self.prev_motion = np.array(motion.start_motion, dtype=np.float32)
        self.prev_audio = np.array(motion.start_audio, dtype=np.float32)
        # a streaming encoder (streaming/motion.py StreamingAudioFeatures) is pushed each step's new
        # samples only and carries its state; the windowed one re-encodes the whole window
        self.streaming_audio = bool(getattr(audio, "streaming", False))
        self._encoded = 0  # samples already pushed to a streaming encoder
        # features of silence, for padded frames (computed once: fixed shape, no audio)
        if self.streaming_audio:
            self.silence = audio.silence()
        else:
            silent = audio.features(np.zeros(spec.window_samples, np.float32))
            self.silence = silent[len(silent) // 2].copy()
        self._pending = np.zeros((0, motion.motion_dim), np.float32)  # last step's lookahead frames
        self._pending_audio = np.zeros((0, self.prev_audio.shape[1]), np.float32)  # ... and their features
        self.step_arrival: float | None = None  # session clock: when the current step's first frame's audio came
        self.shed_steps = {"steps": 0, "dropped": 0}  # steps shed under overload, by kind
        self.step = 0
        self.emitted = 0
        self._consumed = 0  # samples already folded into the running statistics
        self.finished = False
        # asynchronous steps (run_async): where their frames go, the step in flight, a failure
        # to raise to the feeding thread; the lock guards the state a worker and it share
        self._sink: Callable[[list[Frame]], None] | None = None
        self._lock = threading.Condition(threading.RLock())
        self._in_flight = False
        self._failed: BaseException | None = None
        self._total: int | None = None  # frames of the stream, once it has ended (end())

    # --- public API ------------------------------------------------------------------------------
    def feed(self, samples: np.ndarray, arrival: float | None = None) -> list[Frame]:
        """Append 16 kHz mono samples (arrival: the clock time they arrived; default now) and run
        every step whose audio is complete. Returns the frames emitted."""
        if self.finished:
            raise RuntimeError("session already finished")
        if self._sink is not None:
            return self._feed_async(samples, arrival)
        samples = self.conditioner(samples)
        if self.gate is not None:
            self.gate.push(samples)
        arrival = self.clock() if arrival is None else arrival
        frames: list[Frame] = []
        for i in range(0, len(samples), MAX_CHUNK):
            self.ring.write(samples[i:i + MAX_CHUNK], arrival)
            while self._step_ready():
                frames += self._run_step(final=False)
        return frames

    def finish(self) -> list[Frame]:
        """End of stream: emit the remaining whole frames (missing audio is silence/padding)."""
        if self._sink is not None:  # asynchronous: the last steps go to the sink as well
            self.end()
            with self._lock:
                while self._in_flight:
                    self._lock.wait()
                self._sink = None
                self._raise_failed()
        frames: list[Frame] = []
        total = frames_in(self.ring.written)
        while self.emitted < total:
            frames += self._run_step(final=True, total=total)
        self.finished = True
        return frames

    def set_style(self, style: np.ndarray | None) -> None:
        """Crossfade to ``style`` (None: the null style) starting at the next frame."""
        with self._lock:
            self.style.set(style, self.emitted)

    def _blend_seam(self, out: np.ndarray) -> np.ndarray:
        """Crossfade the first emitted frames from the previous step's lookahead prediction of the
        same frames to this step's (linear over the lookahead span), so a step boundary is not a
        switch between two independent samples."""
        n = min(len(self._pending), len(out)) if self.config.seam_blend else 0
        span = len(self._pending) + 1
        for i in range(n):
            w = (i + 1) / span
            out[i] = w * out[i] + (1 - w) * self._pending[i]
        return out

    # --- one step --------------------------------------------------------------------------------
    def _step_ready(self) -> bool:
        """Whether the audio of the next step (a hop and its lookahead) is in."""
        return self.ring.written >= (self.emitted + self.spec.hop + self.spec.lookahead) * FRAME_SAMPLES

    def _step_frames(self) -> int:
        """Frames the next (not final) step emits: the hop; catching up, also up to ``catch_up``
        more whose audio and lookahead are in (never on the first step, whose chunk holds the
        lookahead too: the encoder sees only the chunk shapes warmed at start-up)."""
        n = self.spec.hop
        if self.catch_up and self.emitted:
            ready = self.ring.written // FRAME_SAMPLES - self.spec.lookahead - self.emitted
            n = max(n, min(n + self.catch_up, ready))
        return n

    def _prepare(self, final: bool, total: int | None) -> _Step:
        """A step's bookkeeping before its network work: its frames, the arrival it is due by,
        the running statistics, and (streaming encoder) its new samples normalised and gated."""
        spec = self.spec
        first = self.emitted  # steps follow each other: the next one starts where the last ended
        step_frames = spec.hop if final else self._step_frames()
        end = (first + step_frames + spec.lookahead) * FRAME_SAMPLES
        t_start = self.clock()
        arrival = self.ring.arrival_of((first + 1) * FRAME_SAMPLES)
        self.step_arrival = arrival if arrival is not None else t_start

        # statistics from exactly the samples this step sees for the first time
        new_end = min(end, self.ring.written)
        if new_end > self._consumed:
            self.normalizer.update(self.ring.read(self._consumed, new_end)[0])
            self._consumed = new_end
        # frames with real audio: all hop + lookahead, except at the end of the stream
        n_real = step_frames + spec.lookahead if not final else min(spec.new_frames, total - first)
        n_emit = step_frames if not final else min(spec.hop, n_real)
        # none before the stream's first frame; a catching-up step regenerates what it emits beyond the hop
        regen = min(spec.regen - (step_frames - spec.hop), first)
        chunk = None
        if self.streaming_audio:
            # gated after normalising: a gated sample becomes 0, the normalised value of silence at the
            # running mean (as padding is), so a DC offset cannot turn the gate into a step.
            # The new samples only, each normalised (and gated) once with the statistics of its own step
            start = self._encoded
            chunk, lo, hi = self.ring.read(start, end)
            self._encoded = end
            chunk = self._gated(self.normalizer.normalise(chunk, lo, hi), start)
        return _Step(first, end, n_real, n_emit, t_start, chunk, regen, spec.context + spec.hop - step_frames)

    def _run_step(self, final: bool, total: int | None = None) -> list[Frame]:
        st = self._prepare(final, total)
        first, n_real = st.first, st.n_real
        try:
            if self.streaming_audio:
                if hasattr(self.motion, "sample_after_features"):
                    # a batching scheduler runs the encoder and then, in the same worker, builds
                    # this window from the features and samples it: one hand-over per step
                    t_feat: list[float] = []

                    def window():  # on the worker, once the features are in
                        t_feat.append(self.clock() - st.t_start)
                        return self._window_inputs(st, self.audio.frames(st.window_first, first + n_real))
                    motion, inputs = self.motion.sample_after_features(self.audio, st.chunk, window)
                    audio_feat, t_feat = inputs[0], t_feat[0]
                else:
                    self.audio.push(st.chunk)
                    real = self.audio.frames(st.window_first, first + n_real)
                    t_feat = self.clock() - st.t_start
                    inputs = self._window_inputs(st, real)
                    motion, audio_feat = self.motion.sample(*inputs), inputs[0]
            else:
                spec = self.spec
                window, lo, hi = self.ring.read(st.end - spec.window_samples, st.end)
                feats = self.audio.features(self._gated(self.normalizer.normalise(window, lo, hi),
                                                        st.end - spec.window_samples))
                t_feat = self.clock() - st.t_start
                inputs = self._window_inputs(st, feats[st.offset - st.regen:st.offset + n_real])
                motion, audio_feat = self.motion.sample(*inputs), inputs[0]
        except StepShed:
            return self._emit_shed(st)
        return self._emit_sampled(st, motion, audio_feat, t_feat)

    def _emit_sampled(self, st: _Step, motion: np.ndarray, audio_feat: np.ndarray, t_feat: float) -> list[Frame]:
        shed = "steps" if getattr(self.motion, "degraded", False) else None
        r = st.regen  # the regenerated frames were emitted by earlier steps: dropped here
        out = self._blend_seam(motion[r:r + st.n_emit].copy())
        self._pending = motion[r + st.n_emit:r + st.n_real].copy()
        self._pending_audio = audio_feat[r + st.n_emit:r + st.n_real].copy()
        return self._emit(st.first, st.n_emit, out, audio_feat[r:r + st.n_emit], st.t_start, t_feat, shed)

    def _emit_shed(self, st: _Step) -> list[Frame]:
        return self._emit(st.first, st.n_emit, *self._shed_step(st.n_emit), st.t_start,
                          self.clock() - st.t_start, "dropped")

    # --- asynchronous steps --------------------------------------------------------------------------
    def run_async(self, sink: Callable[[list[Frame]], None]) -> bool:
        """Let :meth:`feed` return at once while a step's network work runs: the frames go to
        ``sink`` from the thread that finishes the step (a scheduler's worker), in order, and
        feed() returns []. Possible when the motion engine can submit a whole step without
        waiting (a batching scheduler, streaming audio encoder); returns whether it is on.
        :meth:`finish` waits for the step in flight and returns the rest as usual. With tens of
        sessions, a thread per session waiting for its step was most of the GIL's traffic."""
        if not (self.streaming_audio and hasattr(self.motion, "submit_after_features")) or self.step:
            return False
        self._sink = sink
        return True

    def can_take(self, samples: int) -> bool:
        """Asynchronous steps: whether :meth:`feed` would take ``samples`` more now without
        waiting for a step (it waits only when the audio not yet stepped through would overflow the
        ring: a source seconds ahead of its steps)."""
        if samples > MAX_CHUNK:  # fed in pieces: a later piece could wait for the step the first begins
            return False
        return not self._in_flight or self.ring.written + samples - self._encoded <= self.ring.capacity

    def end(self) -> None:
        """Asynchronous steps: the stream ends here; its last steps are begun without waiting
        (:meth:`finish` waits for them). No more audio may be fed."""
        with self._lock:
            if self._total is None:
                self._total = frames_in(self.ring.written)
                self._advance()

    def _feed_async(self, samples: np.ndarray, arrival: float | None) -> list[Frame]:
        with self._lock:
            self._raise_failed()
            if self._total is not None:
                raise RuntimeError("session already ended")
            samples = self.conditioner(samples)
            if self.gate is not None:
                self.gate.push(samples)
            arrival = self.clock() if arrival is None else arrival
            for i in range(0, len(samples), MAX_CHUNK):
                piece = samples[i:i + MAX_CHUNK]
                # the ring holds a window and MAX_CHUNK more: never overwrite what the step in
                # flight or a step not begun yet has still to read (a feed far faster than real time)
                while self._in_flight and self.ring.written + len(piece) - self._encoded > self.ring.capacity:
                    self._lock.wait()
                    self._raise_failed()
                self.ring.write(piece, arrival)
                self._advance()
        return []

    def _advance(self) -> None:
        """Begin the next step if its audio is complete — or the stream has ended and frames are
        left — and none is in flight (under the lock)."""
        if self._in_flight or self._failed is not None:
            return
        if self._step_ready():
            st = self._prepare(False, None)
        elif self._total is not None and self.emitted < self._total:
            st = self._prepare(True, self._total)
        else:
            return
        first, n_real = st.first, st.n_real
        t_feat: list[float] = []

        def window():  # on the worker, once the features are in
            with self._lock:
                t_feat.append(self.clock() - st.t_start)
                return self._window_inputs(st, self.audio.frames(st.window_first, first + n_real))

        def done(motion, inputs, error) -> None:  # on the thread that finished the step
            with self._lock:
                self._in_flight = False
                try:
                    if error is None:
                        frames = self._emit_sampled(st, motion, inputs[0], t_feat[0])
                    elif isinstance(error, StepShed):
                        frames = self._emit_shed(st)
                    else:
                        raise error
                    self._sink(frames)
                    self._advance()
                except BaseException as exc:  # noqa: BLE001 - raised to the feeding thread at its next call
                    self._failed = exc
                self._lock.notify_all()

        self._in_flight = True
        try:
            self.motion.submit_after_features(self.audio, st.chunk, window, done)
        except BaseException:
            self._in_flight = False
            raise

    def _raise_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _window_inputs(self, st: _Step, real: np.ndarray) -> tuple:
        """The denoiser window's conditions, as MotionEngine.sample takes them: the step's real
        features (from its regenerated frames on) then silence's up to the window, the indicator,
        the previous frames (those before the regenerated ones), the style."""
        L, n_prev, n = self.motion.n_motions, self.motion.n_prev, len(real)
        audio_feat = np.tile(self.silence, (L, 1))
        audio_feat[:n] = real
        indicator = np.zeros(L, np.float32)
        indicator[:n] = 1
        end = len(self.prev_motion) - st.regen
        prev_motion, prev_audio = self.prev_motion[end - n_prev:end], self.prev_audio[end - n_prev:end]
        return audio_feat, indicator, prev_motion, prev_audio, self.style.at(st.window_first), self.step

    def _gated(self, audio: np.ndarray, start: int) -> np.ndarray:
        """Stream samples [start, start + len(audio)) through the speech gate, re-decided every step
        (a frame's gate may open once its look-ahead has arrived)."""
        return audio if self.gate is None else self.gate.apply(audio, start)

    def _shed_step(self, n_emit: int) -> tuple[np.ndarray, np.ndarray]:
        """The frames of a step whose network work was shed: the previous step's lookahead
        prediction of them, then the last frame held; their audio features likewise (the previous
        step's features of those frames, then the last ones repeated), so the next step's
        conditions continue from what was shown."""
        n = min(len(self._pending), n_emit)
        out = np.concatenate([self._pending[:n], np.repeat(self.prev_motion[-1:], n_emit - n, axis=0)])
        feats = np.concatenate([self._pending_audio[:n], np.repeat(self.prev_audio[-1:], n_emit - n, axis=0)])
        self._pending = self._pending[n:]
        self._pending_audio = self._pending_audio[n:]
        return out.astype(np.float32), feats.astype(np.float32)

    def _emit(self, first: int, n_emit: int, out: np.ndarray, out_audio: np.ndarray, t_start: float,
              t_feat: float, shed: str | None) -> list[Frame]:
        """Continue the conditions with the emitted frames, decode them and make the Frames."""
        keep = self.motion.n_prev + self.spec.regen
        self.prev_motion = np.concatenate([self.prev_motion, out])[-keep:]
        self.prev_audio = np.concatenate([self.prev_audio, out_audio])[-keep:]
        exp, pose = self.decoder(out)
        compute = self.clock() - t_start
        if shed is not None:
            self.shed_steps[shed] += 1

        emit = self.clock() - self.t0
        frames = []
        for i in range(n_emit):
            j = first + i
            arrival = self.ring.arrival_of((j + 1) * FRAME_SAMPLES)
            frames.append(Frame(
                index=j, step=self.step, audio_time=(j + 0.5) / FPS,
                arrival_time=(arrival if arrival is not None else t_start) - self.t0, emit_time=emit,
                motion=out[i], exp=exp[i], pose=pose[i],
                eyes=self.eyes.next() if self.eyes is not None else None, shed=shed))
        self.ring.forget_arrivals((first + n_emit) * FRAME_SAMPLES)
        if self.on_step is not None:
            self.on_step(StepInfo(self.step, first, n_emit, compute, t_feat, shed))
        self.step += 1
        self.emitted += n_emit
        return frames
