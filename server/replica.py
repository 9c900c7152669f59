"""One Ray Serve replica of the model's batched step (docs/SCALING.md).

A :class:`StepReplica` loads the model once, opens its runtime and serves the audio-feature and
motion requests of *any* session through its own :class:`streaming.scheduler.BatchScheduler`:
requests that reach the replica at the same time share network calls as in one process. It keeps
no session: every request carries what its step needs (numpy arrays: the audio window, or the
window's conditions, x_T and, for a stochastic sampler, the noise generator's state, which comes
back advanced), so any replica can serve any step and a replica that dies loses nothing but the
calls in flight.

The class is plain Python; server/cluster.py wraps it with ``serve.deployment`` (replica count,
autoscaling, health checks). Each answer carries a small report of the replica (its id, queue
depth and, at most once a second, its scheduler's figures) that the front end turns into
per-replica metrics without extra calls."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import torch

from diffposetalk.batching import WindowJob
from diffposetalk.model import Guidance, WindowCondition
from diffposetalk.model_dir import load_model_dir
from diffposetalk.sampler import RandomNoise
from streaming.factory import make_scheduler
from streaming.motion import SamplingMotionEngine
from streaming.setup import pick_sampler

log = logging.getLogger("dpt_live.replica")

STATS_EVERY_S = 1.0  # how often an answer carries the scheduler's figures
HANG_S = 10.0  # a request running this long makes the health check fail: Ray restarts the replica


class CallLink:
    """What the replica's scheduler knows of one request's session: its deadline, carried by the
    request (seconds left when the front end sent it), and the motion call its step needs next."""

    def __init__(self, deadline: float, sheddable: bool, motion, label: str):
        self.deadline, self.sheddable, self.motion, self.label = deadline, sheddable, motion, label
        self.live = True

    def due(self) -> tuple[float, bool]:
        return self.deadline, self.sheddable


class StepReplica:
    """The batched step of one model on one runtime, for any session (see the module docstring).

    model_path: the model directory (every replica and the front end load the same one);
    backend, precision, threads: as ``dpt-live serve``; scheduler_options: make_scheduler's."""

    def __init__(self, model_path: str, backend: str = "torch", precision: str = "fp32", threads: int | None = 1,
                 scheduler_options: dict | None = None, warm: dict | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.loaded = load_model_dir(model_path)
        self.model = self.loaded.model
        self.scheduler = make_scheduler(self.loaded, backend, precision, threads, **(scheduler_options or {}))
        self.id = _replica_id()
        self._lock = threading.Lock()
        self._in_flight: dict[int, float] = {}  # request -> start (perf_counter)
        self._next = 0
        self._stats_at = 0.0
        self._hold_until = 0.0  # fault injection (hold): requests wait until then
        if warm:  # the runtime's first-call costs now, not in a live step: warm = {window_samples, sampler[, steps]}
            sampler = warm["sampler"]
            if isinstance(sampler, str):  # a RayService's YAML names it
                sampler = pick_sampler(sampler, warm.get("steps"), self.loaded)
            self.scheduler.networks.warm_audio(int(warm["window_samples"]))
            SamplingMotionEngine(self.model, sampler, Guidance(), torch.zeros(self.model.cfg.shape_dim), 0,
                                 self.scheduler.networks)
        log.info("replica %s: %s on %s", self.id, model_path, self.scheduler.networks.describe())

    # --- the step's two calls --------------------------------------------------------------------
    def audio(self, window: np.ndarray, budget_s: float, sheddable: bool, label: str = "?", **extra):
        """One audio window -> (the scheduler's answer for it, report). ``extra``: further
        arrays of the request, forwarded to the scheduler as they came."""
        with self._running() as running:
            # no follow-up call here: the front end's budget for it already leaves time for the motion call
            link = self._link(budget_s, sheddable, None, label)
            if "state" in extra:  # a streaming encoder's chunk: the session's state came with it
                return self.scheduler.stream_features(window, extra.pop("state"), link, **extra), self._report(running)
            return self.scheduler.features(window, link, **extra), self._report(running)

    def motion(self, arrays: dict[str, np.ndarray], meta: dict, budget_s: float, sheddable: bool, label: str = "?"):
        """One denoiser window -> ((clean motion (L, D), ran fewer steps, noise state or None), report).
        arrays: audio_feat, indicator, prev_motion, prev_audio, style (optional), shape, x_T,
        noise_state (stochastic samplers); meta: sampler, guidance, step."""
        with self._running() as running:
            sampler, guidance = meta["sampler"], meta["guidance"]
            link = self._link(budget_s, sheddable, None, label)
            job, noise = self._job(arrays, guidance, int(meta["step"]))
            out, degraded = self.scheduler.sample(job, sampler, link)
            state = None if noise is None else noise.gen.get_state().numpy()
            return (out, degraded, state), self._report(running) | {"fewer_steps": bool(degraded)}

    def _job(self, arrays: dict[str, np.ndarray], guidance, step: int) -> tuple[WindowJob, RandomNoise | None]:
        dev = self.model.device
        cfg = self.model.cfg
        need = {"audio_feat": (cfg.n_motions, cfg.feature_dim), "prev_motion": (cfg.n_prev_motions, cfg.motion_dim),
                "prev_audio": (cfg.n_prev_motions, cfg.feature_dim), "shape": (cfg.shape_dim,),
                "x_T": (1, cfg.n_motions, cfg.motion_dim), "indicator": (cfg.n_motions,)}
        for name, shape in need.items():  # a clear error for a malformed request, raised to its session only
            a = arrays.get(name)
            if a is None or np.shape(a) != shape:
                raise ValueError(f"motion request: {name} has shape {None if a is None else np.shape(a)}, "
                                 f"this model needs {shape}")

        def t(name):
            a = arrays.get(name)
            return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev)[None]

        cond = WindowCondition(t("audio_feat"), t("shape"), t("style"), t("prev_motion"), t("prev_audio"),
                               t("indicator") if self.model.cfg.use_indicator else None)
        noise = None
        if arrays.get("noise_state") is not None:
            noise = RandomNoise(0, dev)
            noise.gen.set_state(torch.from_numpy(np.asarray(arrays["noise_state"], dtype=np.uint8).copy()))
        x_T = torch.from_numpy(np.ascontiguousarray(arrays["x_T"], dtype=np.float32)).to(dev)
        with torch.inference_mode():
            denoiser = self.model.guided_denoiser(cond, guidance, self.scheduler.net)
        return WindowJob(denoiser, x_T, noise, step), noise

    def _link(self, budget_s: float, sheddable: bool, then, label: str) -> CallLink:
        return CallLink(self.scheduler.clock() + float(budget_s), bool(sheddable) and self.scheduler.shed, then, label)

    # --- health, figures, faults -----------------------------------------------------------------
    def _running(self):
        replica = self

        class Running:
            def __enter__(self):
                wait = replica._hold_until - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                with replica._lock:
                    replica._next += 1
                    self.key = replica._next
                    self.start = replica._in_flight[self.key] = time.perf_counter()
                return self

            def __exit__(self, *exc):
                with replica._lock:
                    replica._in_flight.pop(self.key, None)

        return Running()

    def _report(self, running) -> dict:
        """The replica's id, its requests in flight, the time this request spent here (the front
        end tells its transit time from it) and, at most once a second, its scheduler's figures."""
        with self._lock:
            report = {"replica": self.id, "in_flight": len(self._in_flight),
                      "elapsed_s": time.perf_counter() - running.start}
        now = time.perf_counter()
        if now - self._stats_at >= STATS_EVERY_S:
            self._stats_at = now
            s = self.scheduler.stats()
            report.update(stats={k: s[k] for k in (
                "batch_sizes", "call_ms", "request_ms", "queue_depth", "queue_depth_max", "shed", "late", "errors")})
        return report

    def describe(self) -> dict:
        return {"replica": self.id, "backend": self.scheduler.networks.describe(), "max_batch": self.scheduler.max_batch,
                "latency_budget_ms": self.scheduler.latency_budget_s * 1000}

    def hold(self, seconds: float) -> str:
        """Fault injection for tests and drills: this replica's requests stall for ``seconds``
        (as a hung runtime would); its health check fails meanwhile once one has waited HANG_S."""
        self._hold_until = time.monotonic() + float(seconds)
        return self.id

    def check_health(self) -> None:
        """Ray Serve calls this every health_check_period_s: a request stuck for HANG_S means a
        hung runtime, and the replica is replaced."""
        with self._lock:
            oldest = min(self._in_flight.values(), default=None)
        if oldest is not None and time.perf_counter() - oldest > HANG_S:
            raise RuntimeError(f"replica {self.id}: a request has run for {time.perf_counter() - oldest:.1f} s")

    def __del__(self):
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.close(timeout=1.0)


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a Serve replica (direct use): a local name
        return f"local-{id(object()):x}"
