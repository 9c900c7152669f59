"""One network call serves every live session: the batching scheduler.

A :class:`BatchScheduler` owns a model's runtime (an engines.networks.Networks) and serves all
sessions of a process. Each session keeps its own thread and its own StreamSession; its two
engines are proxies (:class:`ScheduledAudioFeatures`, :class:`ScheduledMotionEngine`) whose calls
hand the scheduler a request and block until a worker thread has run it:

- an *audio* request is one session's audio window; a call runs the audio encoder once over the
  windows of every queued session (``Networks.audio_features_batch``);
- a *motion* request is one session's denoiser window (its guided denoiser, x_T, noise); a call
  samples every queued window that shares the sampler's timesteps, one network pass per sampler
  step for all their rows (``diffposetalk.batching.sample_windows``);
- a session on the streaming encoder hands over its whole step as one request
  (:meth:`BatchScheduler.stream_step`): after its audio call the worker builds its window with
  the session's own code and queues the motion request at once, so the session's thread waits
  once per step.

Each request carries its step's deadline: the arrival of the audio of the step's first emitted
frame plus the latency budget, less a margin for the session's own work. An audio request also
carries what its step still needs after it (its motion call, and the sessions' turnaround between
the two calls, which the scheduler measures). A worker waits a short gather window after the first
queued request (or until every live session has one queued, or the batch is full; after an audio
call, for its sessions' motion requests), then :func:`plan_batch` picks the call: earliest
deadline first, a started step (its motion) before a new one (its audio) at equal deadlines, and
under overload it sheds work in this order (never silent latency growth):

1. a multi-step DDIM window that would miss its deadline runs fewer sampler steps (halved until
   it fits; its frames say ``shed="steps"``);
2. a request whose step cannot be done in time even run alone, now, at its cheapest is dropped —
   also when no call has taken it by the last moment it could start (its session's own thread
   withdraws it): the session emits the previous step's prediction of those frames instead
   (``shed="dropped"``), so the most-late session loses its oldest step and catches up;
3. a call grows only while every member's step is still done in time, the requests ahead of
   them in other groups can still start after it, and it lasts at most ``max_call_ms``; the
   rest wait for the next call.

Work is never shed while there is time for it, so it comes back by itself when the load falls.
Counters, batch sizes, queue depth and call times are in :meth:`BatchScheduler.stats` (and
:meth:`BatchScheduler.prometheus` for /metrics). A call that raises is retried window by window,
so an exception reaches only the session whose request caused it; the networks are
row-independent, so a NaN in one session's window stays in that session's rows."""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
import weakref
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from diffposetalk.batching import WindowJob, sample_windows
from diffposetalk.model import DiffPoseTalk, Guidance
from diffposetalk.sampler import DDIMSampler, Sampler
from diffposetalk.units import FRAME_SAMPLES
from engines.networks import Networks, denoiser_input_names
from streaming.metrics import percentiles_ms
from streaming.motion import SamplingMotionEngine, StepShed, StreamingAudioFeatures

log = logging.getLogger("dpt_live.scheduler")

MARGIN_S = 0.015  # planned slack: a session's work after its result (decode, frames), and jitter
RECENT = 2000  # call and request times kept for the percentiles
REUSE_S = 5e-3  # a cost estimate's relaxation is recomputed after this (times stale_tau_s)
LIVE_REUSE_S = 0.05  # the live-session count is recounted after this (or when a session joins)
# how a pass's time grows with rows beyond the sizes seen: a small batch is mostly per-call
# overhead (the student's denoiser on ONNX Runtime here: 1 row 4.3 ms, 8 rows 8.2, 32 rows 24.8)
SCALE_ONE = 0.5  # exponent from one observed size
SCALE_MIN = 0.3  # least exponent from two


# --- the policy ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pending:
    """What the policy knows of a queued request."""

    deadline: float  # when its step's frames are due (scheduler clock, s)
    group: Hashable  # requests with the same group may share one call
    rows: int = 1  # network rows it adds to a call (a teacher window: its k guided passes)
    steps: int = 1  # network passes it asks for (sampler steps; 1 for audio)
    fewer: tuple[int, ...] = ()  # cheaper step counts it may run with, descending (DDIM)
    sheddable: bool = True  # False: never dropped (a session's set-up call)
    then: tuple[Hashable, int, int] | None = None  # its step's next request (group, rows, cheapest steps)

    @property
    def cheapest(self) -> int:
        return min((self.steps, *self.fewer))


def follow_up(p: Pending, cost: CostEstimate, turnaround: float, next_rows: int | None = None) -> float:
    """Seconds from the end of a request's call to its step done: nothing, or the session's
    turnaround and the call of its next request (``next_rows``: that call's rows; default its own)."""
    if p.then is None:
        return 0.0
    group, rows, steps = p.then
    return turnaround + cost(group, rows if next_rows is None else next_rows) * steps


def time_alone(p: Pending, cost: CostEstimate, turnaround: float) -> float:
    """Seconds from starting a request alone, at its cheapest, to its step done."""
    return cost(p.group, p.rows) * p.cheapest + follow_up(p, cost, turnaround)


@dataclass
class BatchPlan:
    run: list[int]  # indices of the requests of one call, earliest deadline first
    steps: int  # network passes the call runs (less than a member asked for: shed)
    drop: list[int]  # indices of the requests shed: their sessions emit a continuation


# (group, rows) -> seconds of one network pass of a call with that many rows
CostEstimate = Callable[[Hashable, int], float]


def plan_batch(now: float, pending: Sequence[Pending], cost: CostEstimate, max_batch: int,
               others_free_at: float | None = None, turnaround: float = 0.0,
               max_call_s: float = float("inf")) -> BatchPlan:
    """The next call and what to shed, in the module docstring's order. Requests are taken
    earliest deadline first and, at equal deadlines, a step's last request before a step's
    first (a step whose audio is done finishes before a new one starts: its audio is not
    wasted). A request's step is done in time when its call, ``turnaround`` (a session's time
    from one result to its next request) and the call of its next request (the members' next
    requests together, at their cheapest) end by its deadline.

    - drop what cannot be done in time even run alone, now, at its cheapest;
    - the first request left heads the call, with fewer steps when it needs them to be done in
      time; requests of its group join in order while every member is still done in time and
      every request of another group ahead of them can still start after the call in time (no
      other worker free), up to ``max_batch`` windows and ``max_call_s`` seconds (a long call
      keeps the steps that finish next waiting for a worker; one that asked for more steps than
      the call runs joins only if it would be late at its full count too);
    - drop, now rather than later, what is left out and could not be done in time starting when
      a worker is next free — after this call, or at ``others_free_at`` when other workers
      exist — so its session's continuation frames still go out in time."""
    order = sorted(range(len(pending)), key=lambda i: (pending[i].deadline, pending[i].then is not None))
    cost = _memo(cost)  # one plan asks the same (group, rows) many times

    def done(p: Pending, start: float, rows: int, steps: int, next_rows: int) -> float:
        return start + cost(p.group, rows) * steps + follow_up(p, cost, turnaround, next_rows)

    def next_rows(p: Pending) -> int:
        return 0 if p.then is None else p.then[1]

    def alone(p: Pending, start: float) -> float:
        return start + time_alone(p, cost, turnaround)

    drop = [i for i in order if pending[i].sheddable and alone(pending[i], now) > pending[i].deadline]
    dropped = set(drop)
    live = [i for i in order if i not in dropped]
    if not live:
        return BatchPlan([], 0, drop)
    head = pending[live[0]]
    steps = head.steps
    if done(head, now, head.rows, steps, next_rows(head)) > head.deadline:
        for fewer in head.fewer:
            steps = fewer
            if done(head, now, head.rows, fewer, next_rows(head)) <= head.deadline:
                break

    # what the call must keep: its members' deadlines that it can still make (an unsheddable
    # request already late constrains nothing), and the latest start of the requests of other
    # groups ahead in the order (unless another worker is free for them)
    run, rows, after = [live[0]], head.rows, next_rows(head)
    due = head.deadline if done(head, now, rows, steps, after) <= head.deadline else float("inf")
    start_by = float("inf")
    guarded = others_free_at is None or others_free_at > now
    for i in live[1:]:
        p = pending[i]
        if len(run) >= max_batch:
            break
        if p.group == head.group:
            t = done(p, now, rows + p.rows, steps, after + next_rows(p))
            length = cost(p.group, rows + p.rows) * steps
            if (t <= due and now + length <= start_by and length <= max_call_s
                    and (not p.sheddable or t <= p.deadline)
                    # one that makes its deadline in full waits for a full call
                    and not (steps < p.steps and done(p, now, p.rows, p.steps, next_rows(p)) <= p.deadline)):
                run.append(i)
                rows, after = rows + p.rows, after + next_rows(p)
                if t <= p.deadline:
                    due = min(due, p.deadline)
        elif guarded and p.sheddable:
            latest = p.deadline - (alone(p, now) - now)
            if now + cost(head.group, rows) * steps <= latest:
                start_by = min(start_by, latest)
    call_end = now + cost(head.group, rows) * steps
    next_start = call_end if others_free_at is None else min(call_end, max(now, others_free_at))
    taken = set(run)
    drop += [i for i in live if i not in taken and pending[i].sheddable and alone(pending[i], next_start) > pending[i].deadline]
    return BatchPlan(run, steps, drop)


def _memo(cost: CostEstimate) -> CostEstimate:
    """``cost`` remembered for the life of one plan (the estimates do not change within it)."""
    seen: dict[tuple[Hashable, int], float] = {}

    def cached(group: Hashable, rows: int) -> float:
        key = (group, rows)
        value = seen.get(key)
        if value is None:
            value = seen[key] = cost(group, rows)
        return value

    return cached


class CostModel:
    """Seconds per network pass of a call, by group and number of rows: a recent average per
    power-of-two bucket of rows (wall clock: contention included), interpolated between observed
    buckets and continued beyond them along a power law (a fitted line extrapolates badly from
    the narrow range of sizes a steady load produces). 0 before any call.

    An estimate no call has refreshed for a while relaxes towards the fastest call seen in its
    bucket (time constant ``stale_tau_s``): after a stall (another process took the CPU) the
    scheduler would otherwise shed every request on a stale, inflated estimate, run no call, and so
    never learn that the machine is fast again — it would stay stuck dropping every step."""

    def __init__(self, alpha: float = 0.2, stale_tau_s: float = 1.0, clock: Callable[[], float] = time.perf_counter):
        self.alpha, self.stale_tau_s, self.clock = alpha, stale_tau_s, clock
        # bucket -> (mean rows, mean s, fastest s, when last observed)
        self._buckets: dict[Hashable, dict[int, tuple[float, float, float, float]]] = {}
        # group -> (when, relaxed points): a plan asks hundreds of times a millisecond; the
        # relaxation moves by at most 0.5 % of the gap in REUSE_S (5 ms at tau 1 s)
        self._points: dict[Hashable, tuple[float, list[tuple[float, float]]]] = {}
        self._lock = threading.Lock()

    def observe(self, group: Hashable, rows: int, seconds: float) -> None:
        bucket = max(int(rows), 1).bit_length()
        now = self.clock()
        with self._lock:
            buckets = self._buckets.setdefault(group, {})
            old = buckets.get(bucket)
            a = self.alpha
            buckets[bucket] = ((float(rows), float(seconds), float(seconds), now) if old is None else
                               ((1 - a) * old[0] + a * rows, (1 - a) * old[1] + a * seconds, min(old[2], seconds), now))
            self._points.pop(group, None)

    def _relaxed(self, group: Hashable) -> list[tuple[float, float]]:
        now = self.clock()
        with self._lock:
            cached = self._points.get(group)
            if cached is not None and 0.0 <= now - cached[0] <= self.stale_tau_s * REUSE_S:
                return cached[1]
            points = sorted((r, fast + (mean - fast) * math.exp(-max(now - seen, 0.0) / self.stale_tau_s))
                            for r, mean, fast, seen in (self._buckets.get(group) or {}).values())
            self._points[group] = (now, points)
            return points

    def __call__(self, group: Hashable, rows: int) -> float:
        points = self._relaxed(group)
        if not points:
            return 0.0
        # a call over more rows is never slower than calls over fewer rows one after another: an
        # estimate above that is a slow first call of a new shape (an ORT first run, a stall at
        # start-up), and believing it kept every later call at batch 1 — the machine overloaded
        # by per-call overheads, almost every step shed
        cap = min((y * rows / x for x, y in points if 0 < x <= rows), default=math.inf)
        return min(self._estimate(points, rows), cap)

    @staticmethod
    def _estimate(points: list[tuple[float, float]], rows: int) -> float:
        below = [p for p in points if p[0] <= rows]
        above = [p for p in points if p[0] >= rows]
        if below and above:
            (x0, y0), (x1, y1) = below[-1], above[0]
            return y0 if x1 == x0 else y0 + (y1 - y0) * (rows - x0) / (x1 - x0)
        # beyond the observed sizes: the power law through the two nearest (clamped to
        # [SCALE_MIN, 1]); from one size, rows ** SCALE_ONE. Proportional extrapolation from batch-1
        # calls alone locked a loaded machine into batch 1: 10 ms calls (contended) made a batch of
        # three look longer than the longest call allowed, so it was never tried
        near = points[-2:] if below else points[:2]
        (x, y), exponent = (near[-1] if below else near[0]), SCALE_ONE
        if len(near) == 2 and near[0][1] > 0 and near[1][1] > 0 and near[1][0] > near[0][0]:
            exponent = math.log(near[1][1] / near[0][1]) / math.log(near[1][0] / near[0][0])
            exponent = min(max(exponent, SCALE_MIN), 1.0)
        return y * (rows / x) ** exponent


def whole_frames(audio: np.ndarray, what: str) -> np.ndarray:
    """A session's audio for a request as contiguous float32 (S,), S a whole number of 40 ms frames
    (a clear error for a malformed request, raised to its session only)."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if audio.ndim != 1 or not len(audio) or len(audio) % FRAME_SAMPLES:
        raise ValueError(f"{what} has shape {audio.shape}: need (S,), S a multiple of {FRAME_SAMPLES}")
    return audio


# --- requests --------------------------------------------------------------------------------------

class Outcome:
    """A request's result, set once by a worker and awaited by its session's thread. A bare lock
    rather than a concurrent.futures.Future: a worker hands out a call's results to tens of
    sessions while the others wait for the GIL, and a Future's Python-level condition and
    callbacks made that hand-out a fifth of the scheduler's own time."""

    __slots__ = ("_done", "_set", "_value", "_error", "callback")

    def __init__(self, callback: Callable[[Outcome], None] | None = None):
        self._done = threading.Lock()
        self._done.acquire()  # released when the outcome is set
        self._set = False
        self._value: object = None
        self._error: BaseException | None = None
        # called once, by whoever sets the outcome (never under the scheduler's lock): an
        # asynchronous step's continuation (BatchScheduler.submit_stream_step)
        self.callback = callback

    @property
    def done(self) -> bool:
        return self._set

    def set_result(self, value) -> None:
        if not self._set:
            self._set, self._value = True, value
            self._done.release()
            if self.callback is not None:
                self.callback(self)

    def set_exception(self, error: BaseException) -> None:
        if not self._set:
            self._set, self._error = True, error
            self._done.release()
            if self.callback is not None:
                self.callback(self)

    def result(self, timeout: float | None = None):
        """The value (or raise the error); TimeoutError when not set within ``timeout`` s."""
        if not self._done.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise TimeoutError("the request's outcome is not set yet")
        self._done.release()  # later calls return at once
        if self._error is not None:
            raise self._error
        return self._value


@dataclass(eq=False)
class _Request:
    kind: str  # "audio" | "motion"
    pending: Pending
    payload: object  # audio: (S,) window, or (chunk (S,), state (1, Z)) of a streaming encoder; motion: (WindowJob, Sampler)
    link: SessionLink | None
    submitted: float
    future: Outcome = field(default_factory=Outcome)
    # an audio request whose step goes on in the worker: chain(result) -> (motion job, sampler,
    # what the session gets back with the motion); ``stage`` is then the step's motion request
    chain: Callable | None = None
    stage: _Request | None = None
    chained: bool = False  # the motion request of a chained step: its result carries ``extra``
    extra: object = None


@dataclass(eq=False)
class ArrayWindow:
    """A distilled student's deterministic (DDIM) window as numpy arrays: one row of every
    denoiser input but the motion and the step, and its x_T (1, L, D). A call stacks the windows'
    rows and runs the sampler's arithmetic in numpy (:meth:`BatchScheduler._sample_arrays`): the
    same float32 operations as the torch path, without its per-window tensors and small ops —
    each of which releases the GIL, and with tens of session threads waiting for it a worker gave
    it away dozens of times per window."""

    inputs: dict[str, np.ndarray]
    x_T: np.ndarray
    rows: int = 1


class SchedulerClosed(RuntimeError):
    """The scheduler was closed: it runs no more requests."""


class SessionLink:
    """What the scheduler knows of one session: when the audio of its current step's first frame
    arrived (``StreamSession.step_arrival``, read through a weak reference) and so when the step
    is due."""

    def __init__(self, scheduler: BatchScheduler, label: str):
        self.scheduler, self.label = scheduler, label
        self._session: Callable[[], object] | None = None
        self.motion: tuple[tuple, int, int] | None = None  # its windows' (group, rows, cheapest steps)

    def bind(self, session) -> None:
        self._session = weakref.ref(session)
        recount = getattr(self.scheduler, "recount_live", None)  # server/remote_scheduler.py has none
        if recount is not None:
            recount()

    @property
    def session(self):
        return None if self._session is None else self._session()

    @property
    def live(self) -> bool:
        s = self.session
        return s is not None and not s.finished

    def due(self) -> tuple[float, bool]:
        """(deadline on the scheduler's clock, sheddable): the step's frame budget from the
        arrival of its first frame's audio, less the margin. Calls outside a step (the session's
        set-up) have no deadline."""
        s = self.session
        now = self.scheduler.clock()
        if s is None or s.step_arrival is None:
            return now + 3600.0, False
        waited = s.clock() - s.step_arrival  # on the session's own clock
        return now - waited + self.scheduler.latency_budget_s - self.scheduler.margin_s, True


# --- the scheduler ---------------------------------------------------------------------------------

class BatchScheduler:
    """Serves the audio-feature and motion requests of every session of one model on one runtime.

    max_batch: windows per call; gather_ms: how long a worker waits after the first queued
    request for others to join; latency_budget_ms: a frame's emit time minus its audio's arrival
    that the scheduler plans for (deadlines); margin_ms: of which kept for the session's own work
    after a result and for jitter; max_call_ms: how long a call may grow (default a tenth of the
    budget); shed: drop or shorten work that would miss it (off: plain
    earliest-deadline-first batching); workers: threads running calls (on a CPU, one per core lets
    an audio call and a motion call run at once)."""

    def __init__(self, model: DiffPoseTalk, networks: Networks, *, max_batch: int = 32, gather_ms: float = 3.0,
                 latency_budget_ms: float = 250.0, shed: bool = True, workers: int = 1,
                 margin_ms: float = MARGIN_S * 1000, max_call_ms: float | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        if networks.cfg is not model.cfg and networks.cfg != model.cfg:
            raise ValueError("the networks are not this model's")
        if max_batch < 1 or workers < 1:
            raise ValueError("max_batch and workers must be at least 1")
        self.model, self.networks = model, networks
        self.net = networks.network_pass()
        self.max_batch, self.gather_s = int(max_batch), gather_ms / 1000
        self.latency_budget_s, self.shed, self.clock = latency_budget_ms / 1000, shed, clock
        self.margin_s = margin_ms / 1000
        # a tenth of the budget: the motion calls of finished audio never wait long for a worker
        self.max_call_s = (latency_budget_ms / 10 if max_call_ms is None else max_call_ms) / 1000
        self.cost = CostModel(clock=clock)
        self._alpha_bars = model.diffusion_sched.alpha_bars.detach().cpu().numpy()
        self.on_gpu = any(p != "CPUExecutionProvider" for p in getattr(networks, "providers", ()) or ())
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._links: weakref.WeakSet[SessionLink] = weakref.WeakSet()
        self._closed = False
        self._motion_warm = False
        self._opened = 0
        self._live, self._live_at = 0, -math.inf  # live sessions, when last counted (_live_count)
        self._sleeping = 0  # workers waiting with nothing queued (under _cond)
        self._groups: dict[int, tuple[Sampler, tuple]] = {}  # id(sampler) -> (sampler, motion_group)
        # statistics (under _stats_lock)
        self._stats_lock = threading.Lock()
        self._batch_sizes: dict[str, Counter] = defaultdict(Counter)
        self._call_s: dict[str, deque] = defaultdict(lambda: deque(maxlen=RECENT))
        self._request_s: deque = deque(maxlen=RECENT)
        self._wait_s: deque = deque(maxlen=RECENT)
        self._counts = Counter()  # dropped, steps, late, errors
        self._late_s: deque = deque(maxlen=RECENT)  # how late the late results were
        self._queue_max = 0
        self._busy_until: dict[int, float] = {}  # worker -> when its running call should end (under _cond)
        self._awaited: set[SessionLink] = set()  # sessions whose audio just came back: their motion follows
        self._awaited_until = 0.0
        self._audio_done_at = 0.0
        # recent time from an audio call's results to its last session's motion request (relaxes to
        # 0 when no call refreshes it, as the cost estimates do)
        self._turnaround, self._turnaround_at = 0.0, 0.0
        # the watcher: withdraws asynchronous steps at their last moment (started with the first)
        self._watch_cond = threading.Condition()
        self._watched: list = []  # heap of (give-up time, sequence, request, its stage then)
        self._watch_seq = 0
        self._watcher: threading.Thread | None = None
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"batch-scheduler-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()
        log.info("batch scheduler on %s: max batch %d, gather %.1f ms, latency budget %.0f ms, shedding %s, "
                 "%d worker(s)", networks.describe(), self.max_batch, gather_ms, latency_budget_ms,
                 "on" if shed else "off", workers)

    # --- sessions' engines -----------------------------------------------------------------------
    def engines(self, window_samples: int, sampler: Sampler, guidance: Guidance, shape: torch.Tensor,
                seed: int = 0, label: str | None = None, stream_chunks: tuple[int, ...] | None = None):
        """The two proxy engines of a new session and its link (bind it to the StreamSession).
        stream_chunks: (first, later, other...) chunk samples of a session on the streaming audio encoder."""
        with self._cond:
            if self._closed:
                raise SchedulerClosed("the batch scheduler is closed")
            self._opened += 1
            label = label or f"session-{self._opened}"
        link = SessionLink(self, label)
        audio = (ScheduledStreamingFeatures(self, link, window_samples, *stream_chunks) if stream_chunks
                 else ScheduledAudioFeatures(self, link, window_samples))
        motion = ScheduledMotionEngine(self, link, sampler, guidance, shape, seed)
        with self._cond:
            self._links.add(link)
        self.recount_live()
        return audio, motion, link

    # --- requests (called from the sessions' threads) --------------------------------------------
    def features(self, window: np.ndarray, link: SessionLink | None = None) -> np.ndarray:
        """One session's audio window (S,) -> its features (S // 640, F), run with the others'."""
        window = whole_frames(window, "audio window")
        due, sheddable = link.due() if link is not None else (self.clock() + 3600.0, False)
        then = link.motion if link is not None else None
        pending = Pending(due, ("audio", len(window)), sheddable=sheddable and self.shed, then=then)
        return self._submit(_Request("audio", pending, window, link, self.clock()))

    def stream_features(self, chunk: np.ndarray, state: np.ndarray, link: SessionLink | None = None):
        """One session's new audio (n*640,) and streaming-encoder state (1, Z) -> (final (n, F),
        provisional (n, F), new state (1, Z)), run with the others' rows (their states stacked)."""
        chunk = whole_frames(chunk, "audio chunk")
        due, sheddable = link.due() if link is not None else (self.clock() + 3600.0, False)
        then = link.motion if link is not None else None
        pending = Pending(due, ("stream", len(chunk)), sheddable=sheddable and self.shed, then=then)
        return self._submit(_Request("audio", pending, (chunk, state), link, self.clock()))

    def stream_step(self, chunk: np.ndarray, state: np.ndarray, chain: Callable, link: SessionLink | None = None):
        """One session's whole step: its streaming-encoder chunk runs in an audio call, then the
        worker calls ``chain((final, provisional, state))`` -> (WindowJob, Sampler, extra) and
        queues that window for a motion call straight away; returns (clean motion (L, D), whether
        it ran fewer steps, extra). The session's thread hands over once per step instead of
        twice, and the window is built where the features are."""
        return self._submit(self._stream_request(chunk, state, chain, link))

    def _motion_pending(self, job: WindowJob, sampler: Sampler, due: float, sheddable: bool) -> Pending:
        group, steps, fewer = self.motion_group(sampler)
        rows = job.rows if isinstance(job, ArrayWindow) else job.denoiser.n * job.denoiser.rows_per_window
        return Pending(due, group, rows=rows, steps=steps,
                       fewer=fewer if self.shed else (), sheddable=sheddable and self.shed)

    def sample(self, job: WindowJob, sampler: Sampler, link: SessionLink | None = None) -> tuple[np.ndarray, bool]:
        """One session's denoiser window -> (clean motion (L, D), whether it ran fewer steps)."""
        due, sheddable = link.due() if link is not None else (self.clock() + 3600.0, False)
        return self._submit(_Request("motion", self._motion_pending(job, sampler, due, sheddable), (job, sampler),
                                     link, self.clock()))

    def motion_group(self, sampler: Sampler) -> tuple[tuple, int, tuple[int, ...]]:
        """(the group of windows that may share a call with this sampler's, its step count, the
        cheaper step counts it may shed to: halvings, where the sampler can run them). Asked at
        every motion request: remembered per sampler object (kept alive with its entry, so its id
        is not reused while the entry stands)."""
        with self._stats_lock:
            known = self._groups.get(id(sampler))
        if known is not None and known[0] is sampler:
            return known[1]
        group = self._motion_group(sampler)
        with self._stats_lock:
            if len(self._groups) >= 4096:  # sessions come and go: keep it bounded
                self._groups.clear()
            self._groups[id(sampler)] = (sampler, group)
        return group

    def _motion_group(self, sampler: Sampler) -> tuple[tuple, int, tuple[int, ...]]:
        timesteps = sampler.timesteps(self.model)
        group = ("motion", type(sampler).__name__, tuple(timesteps), getattr(sampler, "flexibility", None))
        halvings, n = [], len(timesteps) // 2
        while n >= 1:
            if sampler.fewer_steps(self.model, n) is not None:
                halvings.append(n)
            n //= 2
        return group, len(timesteps), tuple(halvings)

    def submit_stream_step(self, chunk: np.ndarray, state: np.ndarray, chain: Callable,
                           done: Callable[[Outcome], None], link: SessionLink | None = None) -> None:
        """:meth:`stream_step` without waiting: the request is queued and ``done(outcome)`` is
        called with its outcome (the result, or StepShed and any error) by the thread that sets
        it — a worker, or the scheduler's watcher when the step is withdrawn at its last moment.
        A session stepping this way needs no thread of its own waiting for the scheduler: with
        tens of sessions, those waiting threads were most of the GIL's hand-overs."""
        request = self._stream_request(chunk, state, chain, link, Outcome(done))
        self._enqueue(request)
        if request.pending.sheddable:
            self._watch(request)

    def _stream_request(self, chunk, state, chain, link, future: Outcome | None = None) -> _Request:
        """A streaming-encoder step's first request (its audio call, then ``chain`` in the worker)."""
        chunk = whole_frames(chunk, "audio chunk")
        due, sheddable = link.due() if link is not None else (self.clock() + 3600.0, False)
        then = link.motion if link is not None else None
        pending = Pending(due, ("stream", len(chunk)), sheddable=sheddable and self.shed, then=then)
        return _Request("audio", pending, (chunk, state), link, self.clock(), future=future or Outcome(), chain=chain)

    def _watch(self, request: _Request) -> None:
        """Withdraw ``request`` at its last moment unless a call has taken it (the watcher thread
        does for an asynchronous step what a waiting session's thread does in :meth:`_submit`)."""
        current = request.stage or request
        give_up = current.pending.deadline - time_alone(current.pending, self.cost, self.turnaround)
        with self._watch_cond:
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch_loop, name="batch-scheduler-watch", daemon=True)
                self._watcher.start()
            self._watch_seq += 1
            heapq.heappush(self._watched, (give_up, self._watch_seq, request, current))
            if self._watched[0][2] is request:
                self._watch_cond.notify()

    def _watch_loop(self) -> None:
        while True:
            with self._watch_cond:
                while True:
                    if self._closed and not self._watched:
                        return
                    if self._watched and self._watched[0][0] <= self.clock():
                        _, _, request, current = heapq.heappop(self._watched)
                        break
                    self._watch_cond.wait(None if not self._watched else self._watched[0][0] - self.clock())
            if request.future.done:
                continue
            if (request.stage or request) is not current:  # it moved on to its motion: that has its own moment
                self._watch(request)
                continue
            with self._cond:
                waiting = current in self._queue
                if waiting:
                    self._queue.remove(current)
            if waiting:  # a running call's result comes by itself
                self._count("dropped")
                self._count(f"dropped_{current.kind}")
                request.future.set_exception(StepShed(
                    f"{current.kind} request of {request.link.label if request.link else '?'} shed: "
                    "no call could take it in time"))

    def _enqueue(self, request: _Request) -> None:
        with self._cond:
            if self._closed:
                raise SchedulerClosed("the batch scheduler is closed")
            first = not self._queue
            self._queue.append(request)
            self._queue_max = max(self._queue_max, len(self._queue))
            awaited_done = False
            if request.link in self._awaited:
                self._awaited.discard(request.link)
                if not self._awaited:  # the audio call's last session has asked for its motion
                    self._note_turnaround(self.clock() - self._audio_done_at)
                    awaited_done = True
            # wake a worker only when one sleeps with nothing queued or this request can end a
            # worker's wait: otherwise the waiting worker is in a timed wait (the gather window)
            # and wakes by itself; waking it at every request was tens of futile wake-ups per
            # step under the GIL
            if (first or awaited_done or self._sleeping or len(self._queue) >= self.max_batch
                    or len(self._queue) >= self._live_count(self.clock())):
                self._cond.notify()

    def _submit(self, request: _Request):
        """Queue the request and wait for its result. A sheddable request that no call has taken
        by the time it could only just make its deadline alone is withdrawn by its own session's
        thread (StepShed): its continuation frames go out in time even while every worker is busy
        with a long call."""
        p = request.pending
        self._enqueue(request)
        while p.sheddable:
            current = request.stage or request  # a chained step: its motion request once queued
            give_up = current.pending.deadline - time_alone(current.pending, self.cost, self.turnaround)
            try:
                return request.future.result(timeout=max(0.0, give_up - self.clock()))
            except TimeoutError:
                with self._cond:
                    if (request.stage or request) is not current:
                        continue  # it moved on to its motion meanwhile: that has its own last moment
                    waiting = current in self._queue
                    if waiting:
                        self._queue.remove(current)
                if not waiting:
                    break  # running: its result comes
                self._count("dropped")
                self._count(f"dropped_{current.kind}")
                raise StepShed(f"{current.kind} request of {request.link.label if request.link else '?'} "
                               "shed: no call could take it in time") from None
        return request.future.result()

    # --- workers ---------------------------------------------------------------------------------
    def _note_turnaround(self, seconds: float) -> None:
        self._turnaround = seconds if not self._turnaround else 0.8 * self._turnaround + 0.2 * seconds
        self._turnaround_at = self.clock()

    @property
    def turnaround(self) -> float:
        age = max(self.clock() - self._turnaround_at, 0.0)
        return self._turnaround * math.exp(-age / self.cost.stale_tau_s)

    def _ready(self, now: float) -> float:
        """0 when a call should start now, else how long to wait for more requests to gather:
        up to the gather window after the first queued request, and up to the gather window after
        an audio call for its sessions' motion requests (they come a moment later; started
        steps finish first, and a long call started meanwhile would make them miss)."""
        if self._closed or len(self._queue) >= self.max_batch:
            return 0.0
        if self._awaited and now < self._awaited_until:
            return self._awaited_until - now
        if self._awaited:  # waited the whole window: the turnaround is at least that
            self._note_turnaround(now - self._audio_done_at)
            self._awaited.clear()
        if len(self._queue) >= max(self._live_count(now), 1):
            return 0.0  # every session is waiting: no one else is coming
        return max(0.0, min(r.submitted for r in self._queue) + self.gather_s - now)

    def recount_live(self) -> None:
        """A session joined (or was bound to its link): count the live ones again next time."""
        with self._cond:
            self._live_at = -math.inf

    def _live_count(self, now: float) -> int:
        """Live sessions (under _cond), counted at most once per LIVE_REUSE_S: a worker asks at
        every request's arrival, and walking the weak set of links each time was a large share of
        the scheduler's own time with tens of sessions. A session that ended since only makes the
        next call wait its gather window."""
        if now - self._live_at > LIVE_REUSE_S or now < self._live_at:
            self._live, self._live_at = sum(1 for link in self._links if link.live), now
        return self._live

    def _next(self, worker: int) -> tuple[list[_Request], int, list[_Request]] | None:
        """The next call (and what to shed), planned outside the lock: with tens of sessions
        queued a plan takes a while, and every session that hands over or withdraws a request
        needs the lock meanwhile (it was the most waited-for lock of a 32-stream run)."""
        while True:
            with self._cond:
                self._busy_until.pop(worker, None)
                while True:
                    if not self._queue:
                        if self._closed:
                            return None
                        self._sleeping += 1
                        try:
                            self._cond.wait()
                        finally:
                            self._sleeping -= 1
                        continue
                    now = self.clock()
                    wait = self._ready(now)
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                queue = list(self._queue)
                others = None
                if len(self._threads) > 1:  # a left-out request may start on another worker
                    idle = len(self._threads) - 1 - len(self._busy_until)
                    others = now if idle > 0 else min(self._busy_until.values())
            plan = plan_batch(now, [r.pending for r in queue], self.cost, self.max_batch, others, self.turnaround,
                              self.max_call_s)
            with self._cond:
                waiting = set(self._queue)  # another worker, or a session's withdrawal, may have taken some
                run = [queue[i] for i in plan.run if queue[i] in waiting]
                drop = [queue[i] for i in plan.drop if queue[i] in waiting]
                if not run and not drop:
                    continue
                taken = set(run) | set(drop)
                self._queue = [r for r in self._queue if r not in taken]
                if run:
                    rows = sum(r.pending.rows for r in run)
                    self._busy_until[worker] = now + self.cost(run[0].pending.group, rows) * plan.steps
                return run, plan.steps, drop

    def _work(self, worker: int) -> None:
        while True:
            nxt = self._next(worker)
            if nxt is None:
                return
            run, steps, drop = nxt
            for r in drop:
                self._count("dropped")
                self._count(f"dropped_{r.kind}")
                r.future.set_exception(StepShed(f"{r.kind} request of {r.link.label if r.link else '?'} "
                                                "shed: it would miss its deadline"))
            if run:
                self._execute(run, steps)

    def _execute(self, run: list[_Request], steps: int) -> None:
        start = self.clock()
        kind = run[0].kind
        try:
            results = self._call(run, steps)
        except Exception as exc:  # noqa: BLE001 - find whose request fails: each alone, each its own outcome
            if len(run) == 1:
                self._count("errors")
                log.error("batch scheduler: a %s request of %s failed: %s", kind,
                          run[0].link.label if run[0].link else "?", exc)
                run[0].future.set_exception(exc)
                return
            for r in run:
                self._execute([r], steps)
            return
        end = self.clock()
        rows = sum(r.pending.rows for r in run)
        group = run[0].pending.group
        self.cost.observe(group, rows, (end - start) / max(steps, 1))
        with self._stats_lock:
            self._batch_sizes[kind][len(run)] += 1
            self._call_s[kind].append(end - start)
            for r in run:
                self._wait_s.append(start - r.submitted)
                self._request_s.append(end - r.submitted)
                late = end + follow_up(r.pending, self.cost, self.turnaround) - r.pending.deadline
                if r.pending.sheddable and late > 0:
                    self._counts["late"] += 1
                    self._late_s.append(late)
                if kind == "motion" and steps < r.pending.steps:
                    self._counts["steps"] += 1
        if kind == "audio":
            with self._cond:
                self._awaited.update(r.link for r in run if r.link is not None and r.pending.sheddable and r.chain is None)
                self._audio_done_at = self.clock()
                self._awaited_until = self._audio_done_at + self.gather_s
        chained = []
        for r, out in zip(run, results):
            if r.chain is not None:
                chained.append((r, out))
            elif r.chained:
                r.future.set_result((*out, r.extra))
            else:
                r.future.set_result(out)
        if chained:
            self._continue(chained)

    def _continue(self, chained: list) -> None:
        """Chained steps whose audio came back: build each window here (the session's own code,
        through its chain) and queue the motion requests together, with their steps' deadlines."""
        motions = []
        for r, out in chained:
            try:
                job, sampler, extra = r.chain(out)
                m = _Request("motion", self._motion_pending(job, sampler, r.pending.deadline, r.pending.sheddable),
                             (job, sampler), r.link, self.clock(), future=r.future, chained=True, extra=extra)
                motions.append((r, m))
            except Exception as exc:  # noqa: BLE001 - a bad window reaches only its session
                r.future.set_exception(exc)
        with self._cond:
            for r, m in motions:
                r.stage = m
                self._queue.append(m)
            self._queue_max = max(self._queue_max, len(self._queue))
            self._note_turnaround(self.clock() - self._audio_done_at)
            if motions and self._sleeping:
                self._cond.notify()

    def _call(self, run: list[_Request], steps: int) -> list:
        if run[0].kind == "audio" and run[0].pending.group[0] == "stream":
            # streaming encoder: each session's state is one row of the call
            final, prov, state = self.networks.stream_audio_batch(np.stack([r.payload[0] for r in run]),
                                                                  np.concatenate([r.payload[1] for r in run]))
            return [(final[i], prov[i], state[i:i + 1]) for i in range(len(run))]
        if run[0].kind == "audio":
            feats = self.networks.audio_features_batch(np.stack([r.payload for r in run]))
            return list(feats)
        jobs = [r.payload[0] for r in run]
        sampler = run[0].payload[1]
        full = run[0].pending.steps
        # the group holds the sampler's own timesteps (motion_group): not recomputed per call
        timesteps = list(run[0].pending.group[2]) if steps >= full else sampler.fewer_steps(self.model, steps)
        if isinstance(jobs[0], ArrayWindow):
            rows = self._sample_arrays(jobs, timesteps)
            return [(rows[i], steps < r.pending.steps) for i, r in enumerate(run)]
        with torch.inference_mode():
            out = sample_windows(self.model, sampler, jobs, self.net, timesteps)
            # one conversion for the call, then each session's first row (a view)
            rows = torch.cat([o[:1] for o in out]).float().cpu().numpy()
        return [(rows[i], steps < r.pending.steps) for i, r in enumerate(run)]

    def _sample_arrays(self, jobs: list[ArrayWindow], timesteps: list[int]) -> np.ndarray:
        """Deterministic DDIM (diffposetalk.sampler.sample_ddim) over stacked student windows, in
        numpy: one network pass per step for all of them -> (B, L, D)."""
        cfg = self.model.cfg
        abar_all = self._alpha_bars
        x = np.concatenate([j.x_T for j in jobs])
        fixed = {name: np.concatenate([j.inputs[name] for j in jobs]) for name in jobs[0].inputs}
        one = np.float32(1)
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else 0
            abar, abar_prev = abar_all[t], abar_all[t_prev]
            out = self.networks.denoise({**fixed, "motion": x, "step": np.full(len(x), t, np.int64)})[:, -cfg.n_motions:]
            if cfg.target == "noise":
                eps = out
                x0 = (x - np.sqrt(one - abar) * eps) / np.sqrt(abar)
            else:
                x0 = out
                eps = (x - np.sqrt(abar) * x0) / np.sqrt(one - abar)
            x = np.sqrt(abar_prev) * x0 + np.sqrt(one - abar_prev) * eps
        return x

    def arrays_for(self, sampler: Sampler) -> bool:
        """Whether this sampler's windows run as ArrayWindows: a distilled student, deterministic
        DDIM, on a runtime whose network pass is numpy already (ONNX Runtime on the CPU)."""
        return (self.model.cfg.kind == "student" and type(sampler) is DDIMSampler
                and self.networks.name == "onnxruntime" and not self.on_gpu)

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self._counts[what] += 1

    # --- life and figures ------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Run what is queued, refuse new requests, stop the workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        with self._watch_cond:
            self._watched.clear()
            self._watch_cond.notify()
        for t in [*self._threads, self._watcher]:
            if t is not None and t is not threading.current_thread():
                t.join(timeout)
        with self._cond:
            left, self._queue = self._queue, []
        for r in left:
            r.future.set_exception(SchedulerClosed("the batch scheduler was closed"))

    def __enter__(self) -> BatchScheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def live_sessions(self) -> int:
        with self._cond:
            return sum(1 for link in self._links if link.live)

    def stats(self) -> dict:
        """Batch sizes (windows per call), queue depth, call and request times (ms), shed counts."""
        with self._cond:
            depth = len(self._queue)
        with self._stats_lock:
            sizes = {k: dict(sorted(c.items())) for k, c in self._batch_sizes.items()}
            calls = {k: percentiles_ms(list(v)) for k, v in self._call_s.items()}
            request, wait = percentiles_ms(list(self._request_s)), percentiles_ms(list(self._wait_s))
            counts, queue_max = dict(self._counts), self._queue_max
            late = percentiles_ms(list(self._late_s))
        return {"backend": self.networks.describe(), "workers": len(self._threads), "max_batch": self.max_batch,
                "gather_ms": self.gather_s * 1000, "latency_budget_ms": self.latency_budget_s * 1000,
                "shedding": self.shed, "sessions": self.live_sessions, "queue_depth": depth,
                "queue_depth_max": queue_max, "calls": {k: sum(c.values()) for k, c in sizes.items()},
                "batch_sizes": sizes, "call_ms": calls, "wait_ms": wait, "request_ms": request,
                "shed": {"dropped": counts.get("dropped", 0), "steps": counts.get("steps", 0)},
                "dropped_at": {k: counts.get(f"dropped_{k}", 0) for k in ("audio", "motion")},
                "late": counts.get("late", 0), "late_by_ms": late, "errors": counts.get("errors", 0),
                "turnaround_ms": round(self.turnaround * 1000, 2)}

    def prometheus(self, prefix: str = "dpt_scheduler") -> str:
        """The stats in the Prometheus text format, for a server's /metrics."""
        s = self.stats()
        lines = [f"# HELP {prefix}_sessions Sessions served by the batch scheduler.", f"# TYPE {prefix}_sessions gauge",
                 f"{prefix}_sessions {s['sessions']}",
                 f"# HELP {prefix}_queue_depth Requests waiting for a call.", f"# TYPE {prefix}_queue_depth gauge",
                 f"{prefix}_queue_depth {s['queue_depth']}",
                 f"# HELP {prefix}_calls_total Network calls by kind and windows per call.",
                 f"# TYPE {prefix}_calls_total counter"]
        for kind, sizes in s["batch_sizes"].items():
            lines += [f'{prefix}_calls_total{{kind="{kind}",windows="{n}"}} {c}' for n, c in sizes.items()]
        lines += [f"# HELP {prefix}_shed_steps_total Steps shed under overload (dropped, or fewer sampler steps).",
                  f"# TYPE {prefix}_shed_steps_total counter"]
        lines += [f'{prefix}_shed_steps_total{{how="{how}"}} {n}' for how, n in s["shed"].items()]
        lines += [f"# HELP {prefix}_late_total Results delivered after their deadline.",
                  f"# TYPE {prefix}_late_total counter", f"{prefix}_late_total {s['late']}",
                  f"# HELP {prefix}_errors_total Requests that raised.", f"# TYPE {prefix}_errors_total counter",
                  f"{prefix}_errors_total {s['errors']}",
                  f"# HELP {prefix}_call_seconds Recent network call times by kind.",
                  f"# TYPE {prefix}_call_seconds summary"]
        for kind, p in s["call_ms"].items():
            if p:
                lines += [f'{prefix}_call_seconds{{kind="{kind}",quantile="{q}"}} {p[k] / 1000:.6f}'
                          for q, k in (("0.5", "p50"), ("0.99", "p99"))]
        return "\n".join(lines) + "\n"


# --- the sessions' proxy engines -------------------------------------------------------------------

class ScheduledAudioFeatures:
    """A session's AudioFeatureEngine whose windows run in the scheduler's batched calls."""

    def __init__(self, scheduler: BatchScheduler, link: SessionLink, window_samples: int):
        if window_samples % FRAME_SAMPLES:
            raise ValueError("the audio window must be a whole number of motion frames")
        self.scheduler, self.link = scheduler, link
        self.window_samples = window_samples
        self.n_frames = window_samples // FRAME_SAMPLES
        self.feature_dim = scheduler.networks.cfg.feature_dim
        scheduler.networks.warm_audio(window_samples)  # export/load now, in the session's thread

    def features(self, audio: np.ndarray) -> np.ndarray:
        if audio.shape != (self.window_samples,):
            raise ValueError(f"audio window has shape {audio.shape}, the engine is fixed to "
                             f"({self.window_samples},)")
        return self.scheduler.features(audio, self.link)


class ScheduledStreamingFeatures(StreamingAudioFeatures):
    """A session's streaming audio encoder whose chunks run in the scheduler's batched calls, its
    state one row of the call. A shed chunk leaves the state as it was (the stream goes on
    without that audio, the session emits its continuation frames)."""

    def __init__(self, scheduler: BatchScheduler, link: SessionLink, window_samples: int, first_samples: int,
                 hop_samples: int, *more_samples: int):
        super().__init__(scheduler.networks, window_samples, first_samples, hop_samples, *more_samples)
        self.scheduler, self.link = scheduler, link

    def _run(self, audio, state):
        return self.scheduler.stream_features(audio, state, self.link)


class ScheduledMotionEngine(SamplingMotionEngine):
    """A session's motion engine (own sampler, guidance, person shape, x_T and noise) whose
    windows are sampled in the scheduler's batched calls. ``degraded``: the last window ran
    fewer sampler steps than asked (overload)."""

    def __init__(self, scheduler: BatchScheduler, link: SessionLink, sampler: Sampler, guidance: Guidance,
                 shape: torch.Tensor, seed: int = 0):
        super().__init__(scheduler.model, sampler, guidance, shape, seed, scheduler.networks, warm_up=False)
        self.scheduler, self.link = scheduler, link
        self.degraded = False
        self.arrays = scheduler.arrays_for(sampler)
        if self.arrays:
            self.shape_row = self.shape.cpu().numpy().reshape(1, 1, -1).astype(np.float32)
            self.x_T_row = self.x_T.cpu().numpy().astype(np.float32)
        group, steps, fewer = scheduler.motion_group(sampler)
        cfg = scheduler.model.cfg
        rows = 1 if cfg.kind == "student" else 1 + len(cfg.guiding_conditions)  # at most (fewer without a style)
        link.motion = (group, rows, min((steps, *fewer)) if scheduler.shed else steps)
        if not scheduler._motion_warm:  # the runtime's first-call costs, once per scheduler
            self._warm_up()
            scheduler._motion_warm = True

    def window_job(self, audio_feat, indicator, prev_motion, prev_audio, style, step):
        if not self.arrays:
            return super().window_job(audio_feat, indicator, prev_motion, prev_audio, style, step)
        # the inputs GuidedDenoiser would give the student's pass, as one numpy row each
        cfg = self.model.cfg
        person = self.shape_row
        if cfg.use_style:
            vec = self.null_style if style is None else style
            person = np.concatenate([person, np.asarray(vec, np.float32).reshape(1, 1, -1)], -1)
        w_style = float(self.guidance.scales.get("style", 0.0)) if style is not None else 0.0
        given = {"audio_feat": audio_feat[None], "person": person, "prev_motion": prev_motion[None],
                 "prev_audio": prev_audio[None], "indicator": indicator[None],
                 "guidance": np.array([[float(self.guidance.scales.get("audio", 1.0)), w_style]], np.float32)}
        names = [n for n in denoiser_input_names(cfg) if n not in ("motion", "step")]
        return ArrayWindow({n: np.ascontiguousarray(given[n], np.float32) for n in names}, self.x_T_row)

    def sample(self, audio_feat, indicator, prev_motion, prev_audio, style, step):
        job = self.window_job(audio_feat, indicator, prev_motion, prev_audio, style, step)
        out, self.degraded = self.scheduler.sample(job, self.sampler, self.link)
        return out

    def _chain(self, audio: ScheduledStreamingFeatures, chunk: np.ndarray, window: Callable) -> tuple:
        """(the chunk as the call takes it, the step's continuation in the worker once the encoder
        ran: keep its state, record its features, build the window with ``window()``)."""
        chunk, first = audio.begin(chunk)

        def chain(result):
            final, prov, audio.state = result
            audio.record(first, final, prov)
            inputs = window()
            return self.window_job(*inputs), self.sampler, inputs

        return chunk, chain

    def sample_after_features(self, audio: ScheduledStreamingFeatures, chunk: np.ndarray, window: Callable):
        """A whole step in one request (BatchScheduler.stream_step): ``audio``'s encoder runs on
        ``chunk``, then ``window()`` (called in the worker, with the features recorded) gives
        :meth:`sample`'s arguments, whose window is sampled. Returns (motion, those arguments)."""
        chunk, chain = self._chain(audio, chunk, window)

        out, self.degraded, inputs = self.scheduler.stream_step(chunk, audio.state, chain, self.link)
        return out, inputs

    def submit_after_features(self, audio: ScheduledStreamingFeatures, chunk: np.ndarray, window: Callable,
                              done: Callable[[np.ndarray | None, tuple | None, BaseException | None], None]) -> None:
        """:meth:`sample_after_features` without waiting (BatchScheduler.submit_stream_step):
        ``done(motion, window's arguments, None)`` — or ``done(None, None, error)``, StepShed
        when the step was shed — is called from the thread that finishes the step."""
        chunk, chain = self._chain(audio, chunk, window)

        def finished(outcome: Outcome) -> None:
            try:
                out, degraded, inputs = outcome.result()
            except BaseException as exc:  # noqa: BLE001 - the session decides (StepShed: continuation)
                done(None, None, exc)
                return
            self.degraded = degraded
            done(out, inputs, None)

        self.scheduler.submit_stream_step(chunk, audio.state, chain, finished, self.link)
