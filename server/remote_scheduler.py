"""The batching scheduler's interface, served by Ray Serve replicas (docs/SCALING.md).

A :class:`RemoteScheduler` stands where a :class:`streaming.scheduler.BatchScheduler` stands —
``build_session(..., scheduler=)`` gives a session its two proxy engines and a link — but the
network work of each step goes to a replica (server/replica.py) through a deployment handle. The
session (ring buffer, continuation frames, style fader, normaliser, noise generator) stays here in
the front end; each request carries what its step needs as numpy arrays, so any replica serves any
step, and Ray Serve picks the replica (the one with the fewest requests in flight).

Faults: each attempt waits at most ``step_timeout_s``; a replica that died, hung or was shut down
costs a retry, which Ray routes to another replica (the dead one is dropped from routing, a hung
one has its requests piling up). When the retries are spent the step is shed: the session emits
its continuation frames flagged as degraded (StepShed, as under overload) and the stream goes on.
An error raised by the request itself (bad input) reaches only its session, as in one process."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque

import numpy as np
import torch

from diffposetalk.model import DiffPoseTalk, Guidance
from diffposetalk.sampler import Sampler
from diffposetalk.units import FRAME_SAMPLES
from streaming.metrics import percentiles_ms
from streaming.motion import SamplingMotionEngine, StepShed, StreamingAudioFeatures
from streaming.scheduler import MARGIN_S, RECENT, SchedulerClosed, SessionLink, whole_frames

log = logging.getLogger("dpt_live.cluster")


class ClusterBackend:
    """What a session reports as its backend: the replicas' runtime, through Ray."""

    name = "ray"

    def __init__(self, describe: str, cfg=None):
        self._describe, self.cfg = describe, cfg  # cfg: the model's, for a streaming encoder's state size

    def describe(self) -> str:
        return self._describe

    def stream_state_size(self) -> int:
        from diffposetalk.stream_encoder import state_size
        from engines.networks import stream_config

        return state_size(stream_config(self.cfg))


class RemoteScheduler:
    """Sessions' network calls on Ray Serve replicas; the interface of BatchScheduler that
    sessions and the server use (engines, close, stats, prometheus).

    handle: the deployment handle (server/cluster.py); model: the front end's copy of the model
    (its constants: start frames, null style, normalisation, x_T shapes; it runs no network);
    step_timeout_s: the longest one attempt waits; retries: further attempts on another replica."""

    def __init__(self, handle, model: DiffPoseTalk, *, latency_budget_ms: float = 250.0, shed: bool = True,
                 step_timeout_s: float = 1.0, retries: int = 2, margin_ms: float = MARGIN_S * 1000,
                 health=None, clock=time.perf_counter):
        self.handle, self.model = handle, model
        self.latency_budget_s, self.margin_s, self.shed, self.clock = latency_budget_ms / 1000, margin_ms / 1000, shed, clock
        self.step_timeout_s, self.retries = float(step_timeout_s), int(retries)
        self.health = health  # () -> {"kind": "ray", "replicas": N, "healthy": H}
        self._lock = threading.Lock()
        self._closed = False
        self._opened = 0
        self._links: list = []  # weak references would do; sessions are few, and dead ones are skipped
        self._in_flight = 0
        self._faults: Counter = Counter()  # timeout, died, closed, shed (retries spent)
        # recent times a request spends outside the replica (Ray, serialisation) and recent motion
        # round trips; medians, so that one stall does not make every later budget look spent
        self._transit_s: deque = deque(maxlen=32)
        self._motion_s: deque = deque(maxlen=32)
        self._shed: Counter = Counter()  # this front end's steps shed: dropped (by a replica or faults), fewer steps
        self._replicas: dict[str, dict] = {}  # id -> in_flight, stats, steps
        self._step_s: dict[tuple[str, str], deque] = defaultdict(lambda: deque(maxlen=RECENT))
        info = self._call("describe")  # the replicas' runtime and batch size, for reports
        self.networks = ClusterBackend(info["backend"], model.cfg)
        self.max_batch = int(info["max_batch"])

    # --- sessions' engines -----------------------------------------------------------------------
    def engines(self, window_samples: int, sampler: Sampler, guidance: Guidance, shape: torch.Tensor,
                seed: int = 0, label: str | None = None, stream_chunks: tuple[int, int] | None = None):
        """As BatchScheduler.engines; with ``stream_chunks`` the session's streaming-encoder state
        stays here and travels with each chunk, so any replica can encode any chunk."""
        with self._lock:
            if self._closed:
                raise SchedulerClosed("the cluster scheduler is closed")
            self._opened += 1
            label = label or f"session-{self._opened}"
            link = SessionLink(self, label)
            self._links = [x for x in self._links if x.session is not None or x._session is None] + [link]
        audio = (RemoteStreamingFeatures(self, link, window_samples, *stream_chunks) if stream_chunks
                 else RemoteAudioFeatures(self, link, window_samples))
        return audio, RemoteMotionEngine(self, link, sampler, guidance, shape, seed), link

    # --- requests --------------------------------------------------------------------------------
    def features(self, window: np.ndarray, link: SessionLink | None = None, **extra):
        """One session's audio window -> what a replica's scheduler answers for it (features);
        ``extra`` arrays travel with it unchanged."""
        window = whole_frames(window, "audio window")
        return self._step("audio", link, window, **extra)

    def stream_features(self, chunk: np.ndarray, state: np.ndarray, link: SessionLink | None = None):
        """One session's new audio and streaming-encoder state -> (final, provisional, new state),
        encoded on a replica (retried as a whole: the state sent is the one before the chunk)."""
        chunk = whole_frames(chunk, "audio chunk")
        return self._step("audio", link, chunk, state=np.ascontiguousarray(state, dtype=np.float32))

    def sample_arrays(self, arrays: dict[str, np.ndarray], meta: dict, link: SessionLink | None = None):
        """One session's denoiser window as arrays -> (motion (L, D), fewer steps, noise state)."""
        return self._step("motion", link, arrays, meta)

    def _step(self, kind: str, link: SessionLink | None, *args, **kwargs):
        with self._lock:
            if self._closed:
                raise SchedulerClosed("the cluster scheduler is closed")
            self._in_flight += 1
        try:
            return self._call(kind, *args, link=link, **kwargs)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _call(self, method: str, *args, link: SessionLink | None = None, **kwargs):
        """One request on some replica, with the timeout and the retries of the module docstring."""
        from ray.exceptions import GetTimeoutError, RayError, RayTaskError
        from ray.serve.exceptions import RayServeException

        label = link.label if link is not None else "?"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            extra = {}
            if method in ("audio", "motion"):
                # the replica's scheduler plans with the time left once the answer is back here: less
                # the transit through Ray and, for an audio window, the motion call its step still needs
                due, sheddable = link.due() if link is not None else (self.clock() + 3600.0, False)
                left = due - self.clock()
                if sheddable and self.shed and left < 0:  # late already: shed here, without a round trip
                    with self._lock:
                        self._shed["dropped"] += 1
                    raise StepShed(f"{method} request of {label}: {-left * 1000:.0f} ms late before it was sent")
                budget = left - self._recent(self._transit_s) - (self._recent(self._motion_s) if method == "audio" else 0.0)
                extra = {"budget_s": budget, "sheddable": sheddable and self.shed, "label": label}
            start = self.clock()
            response = getattr(self.handle, method).remote(*args, **kwargs, **extra)
            try:
                answer = response.result(timeout_s=self.step_timeout_s)
            except RayTaskError as exc:
                if isinstance(exc, StepShed):  # the replica's scheduler shed it (overload): as in one process
                    with self._lock:
                        self._shed["dropped"] += 1
                        self._transit_s.append(self.clock() - start)  # answered at once: the round trip is transit
                    raise
                if not isinstance(exc, SchedulerClosed):  # the request's own error: its session's
                    raise
                cause = "closed"  # a replica shutting down (scaled in, redeployed): try another
                last = exc
            except GetTimeoutError as exc:
                response.cancel()
                cause, last = "timeout", exc
            except (RayError, RayServeException) as exc:  # a replica died, is unreachable or full: try another
                cause, last = "died", exc
            else:
                if method == "describe":
                    return answer
                result, report = answer
                self._note(method, report, self.clock() - start)
                return result
            with self._lock:
                self._faults[cause] += 1
            log.warning("cluster: %s request of %s, attempt %d: %s (%s)", method, label, attempt + 1, cause,
                        str(last).splitlines()[0][:160] if str(last) else type(last).__name__)
        with self._lock:
            self._faults["shed"] += 1
            self._shed["dropped"] += 1
        if method == "describe":
            raise RuntimeError(f"no replica answered: {last}")
        raise StepShed(f"{method} request of {label}: no replica answered in {self.retries + 1} attempts ({last})")

    def _recent(self, times: deque) -> float:
        with self._lock:
            return float(np.median(times)) if times else 0.0

    def _note(self, kind: str, report: dict, seconds: float) -> None:
        rid = report.get("replica", "?")
        now = self.clock()
        with self._lock:
            r = self._replicas.setdefault(rid, {"in_flight": 0, "stats": None, "requests": Counter()})
            r["in_flight"] = report.get("in_flight", 0)
            r["requests"][kind] += 1
            r["seen"] = now
            if report.get("stats") is not None:
                r["stats"] = report["stats"]
            self._step_s[(rid, kind)].append(seconds)
            self._transit_s.append(max(0.0, seconds - report.get("elapsed_s", seconds)))
            if kind == "motion":
                self._motion_s.append(seconds)
            if kind == "motion" and report.get("fewer_steps"):
                self._shed["steps"] += 1

    # --- life and figures ------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._closed = True

    def __enter__(self) -> RemoteScheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def live_sessions(self) -> int:
        with self._lock:
            return sum(1 for link in self._links if link.live)

    def stats(self) -> dict:
        """BatchScheduler.stats()'s keys summed over the replicas heard from, plus per replica:
        requests in flight, its scheduler's queue depth, batch sizes and call times, and the step
        latency seen from here (request to answer, through Ray); faults and retries."""
        with self._lock:
            replicas = {rid: {**r, "requests": dict(r["requests"])} for rid, r in self._replicas.items()}
            steps = {key: list(v) for key, v in self._step_s.items()}
            faults, in_flight, shed_here = dict(self._faults), self._in_flight, dict(self._shed)
        per = {}
        calls: Counter = Counter()
        late, errors, depth, depth_max = 0, 0, 0, 0
        sizes_all: dict[str, Counter] = defaultdict(Counter)
        for rid, r in sorted(replicas.items()):
            s = r["stats"] or {}
            sizes = s.get("batch_sizes", {})
            for kind, c in sizes.items():
                calls[kind] += sum(c.values())
                sizes_all[kind].update(c)
            depth_max = max(depth_max, s.get("queue_depth_max", 0))
            late += s.get("late", 0)
            errors += s.get("errors", 0)
            depth += s.get("queue_depth", 0)
            per[rid] = {"in_flight": r["in_flight"], "queue_depth": s.get("queue_depth", 0), "batch_sizes": sizes,
                        "call_ms": s.get("call_ms", {}), "requests": r["requests"],
                        "step_ms": {kind: percentiles_ms(v) for (i, kind), v in steps.items() if i == rid}}
        return {"backend": f"ray: {self.networks.describe()}", "sessions": self.live_sessions, "max_batch": self.max_batch,
                "latency_budget_ms": self.latency_budget_s * 1000, "shedding": self.shed, "queue_depth": depth,
                "in_flight": in_flight, "calls": dict(calls), "queue_depth_max": depth_max,
                "batch_sizes": {k: dict(sorted(c.items())) for k, c in sizes_all.items()},
                # a call as this front end sees it: request to answer through Ray, every replica
                "call_ms": {kind: percentiles_ms([x for (_, k), v in steps.items() if k == kind for x in v])
                            for kind in {k for _, k in steps}},
                "shed": {"dropped": shed_here.get("dropped", 0), "steps": shed_here.get("steps", 0)},
                "late": late, "errors": errors, "faults": faults, "replicas": per,
                "step_timeout_s": self.step_timeout_s, "retries": self.retries}

    def prometheus(self, prefix: str = "dpt_cluster") -> str:
        """The per-replica figures in the Prometheus text format, for the server's /metrics."""
        from server.metrics import render_cluster

        return render_cluster(self.stats(), None if self.health is None else self.health(), prefix)


class RemoteAudioFeatures:
    """A session's AudioFeatureEngine whose windows run on a replica."""

    def __init__(self, scheduler: RemoteScheduler, link: SessionLink, window_samples: int):
        if window_samples % FRAME_SAMPLES:
            raise ValueError("the audio window must be a whole number of motion frames")
        self.scheduler, self.link = scheduler, link
        self.window_samples = window_samples
        self.n_frames = window_samples // FRAME_SAMPLES
        self.feature_dim = scheduler.model.cfg.feature_dim

    def features(self, audio: np.ndarray) -> np.ndarray:
        if audio.shape != (self.window_samples,):
            raise ValueError(f"audio window has shape {audio.shape}, the engine is fixed to ({self.window_samples},)")
        return self.scheduler.features(audio, self.link)


class RemoteStreamingFeatures(StreamingAudioFeatures):
    """A session's streaming audio encoder whose chunks run on a replica; its state stays here."""

    def __init__(self, scheduler: RemoteScheduler, link: SessionLink, window_samples: int, first_samples: int,
                 hop_samples: int):
        super().__init__(scheduler.networks, window_samples, first_samples, hop_samples)
        self.scheduler, self.link = scheduler, link

    def _run(self, audio, state):
        return self.scheduler.stream_features(audio, state, self.link)


class RemoteMotionEngine(SamplingMotionEngine):
    """A session's motion engine whose windows are sampled on a replica: the session's constants
    (x_T, shape, guidance, sampler) and, for a stochastic sampler, its noise generator's state go
    with each window; the state comes back advanced, so the draws are those of one process."""

    def __init__(self, scheduler: RemoteScheduler, link: SessionLink, sampler: Sampler, guidance: Guidance,
                 shape: torch.Tensor, seed: int = 0):
        super().__init__(scheduler.model, sampler, guidance, shape, seed, warm_up=False)
        self.scheduler, self.link = scheduler, link
        self.degraded = False
        self._shape = self.shape[0].cpu().numpy()
        self._x_T = self.x_T.cpu().numpy()

    def sample(self, audio_feat, indicator, prev_motion, prev_audio, style, step):
        arrays = {"audio_feat": audio_feat, "indicator": indicator, "prev_motion": prev_motion,
                  "prev_audio": prev_audio, "shape": self._shape, "x_T": self._x_T}
        if style is not None:
            arrays["style"] = style
        if self.sampler.stochastic:
            arrays["noise_state"] = self.noise.gen.get_state().numpy()
        meta = {"sampler": self.sampler, "guidance": self.guidance, "step": int(step)}
        out, self.degraded, state = self.scheduler.sample_arrays(arrays, meta, self.link)
        if state is not None:
            self.noise.gen.set_state(torch.from_numpy(np.asarray(state, dtype=np.uint8).copy()))
        return out
