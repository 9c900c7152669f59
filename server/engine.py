"""What every session of the server shares: the model (loaded once), the sampler, the window
configuration, the FLAME identity, the backend and the batching scheduler that serves every
session's network calls — and how a session's StreamSession is built from them (always through
streaming.factory.build_session)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from diffposetalk.model import Guidance
from diffposetalk.model_dir import LoadedModel
from diffposetalk.sampler import Sampler
from engines.networks import choose_backend
from streaming.factory import build_session, make_scheduler
from streaming.scheduler import BatchScheduler
from streaming.session import StreamConfig, StreamSession


@dataclass
class Engine:
    loaded: LoadedModel
    sampler: Sampler
    config: StreamConfig
    shape_raw: np.ndarray = field(default_factory=lambda: np.zeros(100, np.float32))
    backend: str = "auto"
    guidance_mode: str | None = None
    dynamic_threshold: tuple[float, float, float] | None = None
    default_scales: dict[str, float] = field(default_factory=lambda: {"audio": 1.15, "style": 3.0})
    default_style_name: str | None = None  # a preset name, a file name, or None (null style)
    default_style: np.ndarray | None = None
    build_kwargs: dict = field(default_factory=dict)  # extra build_session options (precision)
    backend_desc: str = ""  # what the backend resolved to (a built session's .backend), for reports
    # one batching scheduler serves all sessions (streaming/scheduler.py); None in probe(): per-session calls
    batching: bool = True
    scheduler_options: dict = field(default_factory=dict)  # make_scheduler's (max_batch, latency_budget_ms)
    scheduler: BatchScheduler | None = None  # or a RemoteScheduler: the steps run on Ray Serve replicas
    cluster: object | None = None  # the RayCluster those replicas belong to (server/cluster.py), else None
    # a session behind its audio (an overloaded server) takes two frames a step until it has caught
    # up (StreamConfig.catch_up): on CPU runtimes in this process (not TensorRT, whose plans are per
    # chunk shape, nor a cluster's replicas)
    catch_up: bool = True

    @property
    def styles(self) -> list[str]:
        return sorted(self.loaded.styles)

    def preset(self, name: str | None) -> np.ndarray | None:
        """The vector of a preset (None: the null style). Only presets: a client never names a file."""
        if name is None:
            return None
        if name not in self.loaded.styles:
            known = ", ".join(self.styles) or "none"
            raise KeyError(f"unknown style {name!r} (presets: {known})")
        return self.loaded.styles[name]

    def guidance(self, scales: dict[str, float]) -> Guidance:
        return Guidance(scales=dict(scales), mode=self.guidance_mode, dynamic_threshold=self.dynamic_threshold)

    def session_config(self) -> StreamConfig:
        """The window configuration of the server's sessions: ``config``, catching up where it can."""
        if not self.catch_up or self.config.catch_up or not self.config.spec().regen:
            return self.config
        backend = (self.backend if self.backend != "auto"
                   else choose_backend("auto", self.build_kwargs.get("precision", "fp32")))
        if backend == "tensorrt" or not (self.scheduler is None or isinstance(self.scheduler, BatchScheduler)):
            return self.config
        return replace(self.config, catch_up=True)

    def build(self, style: np.ndarray | None, scales: dict[str, float], on_step=None) -> StreamSession:
        return build_session(self.loaded, self.sampler, self.guidance(scales), self.session_config(), style,
                             self.shape_raw, on_step=on_step, backend=self.backend, scheduler=self.scheduler,
                             **self.build_kwargs)

    def probe(self) -> StreamSession:
        """Build a session now, so that a bad backend fails at start-up and not in a pipeline
        thread, and pin the backend it resolved to: every session rebuild (reset, guidance, pause,
        a source switch) builds again, and with "auto" each would choose again and, after a
        fallback to torch, retry the export that failed."""
        session = self.build(self.default_style, self.default_scales)
        self.backend_desc = str(session.backend)  # "name (precision)" (streaming.factory.build_session)
        if self.backend == "auto":
            name, _, precision = self.backend_desc.partition(" (")
            self.backend = name
            self.build_kwargs = {**self.build_kwargs, "precision": precision.rstrip(")")}
        if self.batching and self.scheduler is None:
            # on the networks the probe resolved (open_networks shares them: built once)
            self.scheduler = make_scheduler(self.loaded, self.backend, self.build_kwargs.get("precision", "fp32"),
                                            self.build_kwargs.get("threads"), **self.scheduler_options)
        return session

    def close(self) -> None:
        """Stop the scheduler's workers (sessions still waiting on it get SchedulerClosed) and the cluster."""
        if self.scheduler is not None:
            self.scheduler.close()
        if self.cluster is not None:  # the replicas, and Ray itself when this server started it
            self.cluster.close()

    def cluster_health(self) -> dict | None:
        """{"kind": "ray", "replicas": N, "healthy": H} with a cluster, else None (/healthz)."""
        if self.cluster is None:
            return None
        h = self.cluster.health()
        return {"kind": h["kind"], "replicas": h["replicas"], "healthy": h["healthy"]}

    @cached_property
    def n_params(self) -> int:  # model_info answers every hello: count once
        return sum(p.numel() for p in self.loaded.model.parameters())

    def model_info(self) -> dict:
        cfg = self.loaded.config
        n_params = self.n_params
        return {"path": str(self.loaded.path), "kind": cfg.kind, "description": cfg.description,
                "arch": f"{cfg.n_layers}x{cfg.feature_dim} denoiser, {n_params / 1e6:.1f} M parameters, "
                        f"{'head pose' if cfg.head_pose else 'no head pose'}",
                "student_steps": cfg.student_steps, "sampler": self.sampler.name,
                "denoiser_steps": len(self.sampler.timesteps(self.loaded.model)),
                "backend": self.backend_desc or self.backend,
                "batching": None if self.scheduler is None else {
                    "max_batch": self.scheduler.max_batch,
                    "latency_budget_ms": round(self.scheduler.latency_budget_s * 1000)},
                "window_ms": {"hop": self.config.hop_ms, "lookahead": self.config.lookahead_ms,
                              "context": self.config.context_ms, "regen": self.config.regen_ms}}
