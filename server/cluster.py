"""The Ray Serve side of `dpt-live serve --cluster ray` (docs/SCALING.md): start or join Ray,
deploy the model's batched step (server/replica.py) as a Serve application with N replicas or an
autoscaling range, hand out its deployment handle, watch the replicas' health, and on close stop
exactly what it started (the application; Serve and Ray too when it started them)."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from diffposetalk.errors import UserError

log = logging.getLogger("dpt_live.cluster")

APP = "dpt-live"
DEPLOYMENT = "StepReplica"


@dataclass
class ClusterOptions:
    address: str | None = None  # None: a local Ray started and stopped with the server; "auto" or HOST:PORT
    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas, driven by requests in flight
    target_in_flight: float = 4.0  # autoscaling: requests in flight per replica it aims for (~ streams x rtt / hop)
    replica_cpus: float = 1.0  # Ray resources one replica holds
    replica_gpus: float = 0.0
    local_cpus: int = 2  # CPUs a local Ray offers
    app_name: str = APP
    health_period_s: float = 2.0  # Serve's health check of each replica (StepReplica.check_health)
    health_timeout_s: float = 10.0
    attach: bool = False  # use the application already running under app_name (a KubeRay RayService's)


def build_app(args: dict):
    """The Serve application of the model's step, from plain settings: what `serve --cluster ray`
    deploys, and the ``import_path`` (``server.cluster:build_app``) of a KubeRay RayService, whose
    ``args`` are these keys: model (a directory every node has), backend, precision, threads,
    scheduler_options, warm, replicas | autoscale [MIN, MAX], target_in_flight, replica_cpus,
    replica_gpus, health_period_s, health_timeout_s."""
    from ray import serve

    from server.replica import StepReplica

    d = ClusterOptions()
    autoscale = args.get("autoscale")
    scaling = ({"autoscaling_config": {"min_replicas": int(autoscale[0]), "max_replicas": int(autoscale[1]),
                                       "initial_replicas": max(1, int(autoscale[0])),
                                       "target_ongoing_requests": float(args.get("target_in_flight", d.target_in_flight))}}
               if autoscale else {"num_replicas": int(args.get("replicas", d.replicas))})
    scheduler_options = dict(args.get("scheduler_options") or {})
    max_batch = int(scheduler_options.get("max_batch", 32))
    deployment = serve.deployment(
        name=DEPLOYMENT, ray_actor_options={"num_cpus": float(args.get("replica_cpus", d.replica_cpus)),
                                            "num_gpus": float(args.get("replica_gpus", d.replica_gpus))},
        # every session has at most one request in flight: a replica takes a full batch and more
        max_ongoing_requests=max(2 * max_batch, 8), health_check_period_s=float(args.get("health_period_s", d.health_period_s)),
        health_check_timeout_s=float(args.get("health_timeout_s", d.health_timeout_s)), graceful_shutdown_timeout_s=2.0,
        **scaling)(StepReplica)
    return deployment.bind(str(args["model"]), args.get("backend", "auto"), args.get("precision", "fp32"),
                           args.get("threads", 1), scheduler_options, args.get("warm"))


def parse_autoscale(text: str) -> tuple[int, int]:
    """"MIN:MAX" -> (min, max), 0 <= min <= max, max >= 1."""
    lo, sep, hi = text.partition(":")
    try:
        lo_n, hi_n = int(lo), int(hi)
    except ValueError:
        raise UserError(f"--autoscale {text!r}: need MIN:MAX, e.g. 1:4") from None
    if not sep or lo_n < 0 or hi_n < 1 or lo_n > hi_n:
        raise UserError(f"--autoscale {text!r}: need 0 <= MIN <= MAX and MAX >= 1")
    return lo_n, hi_n


class RayCluster:
    """Ray and the Serve application of the model's step; ``handle`` routes a call to a replica."""

    def __init__(self, options: ClusterOptions):
        self.options = options
        self.handle = None
        self.started_ray = False
        self.started_serve = False
        self._health = {"kind": "ray", "replicas": 0, "healthy": 0}
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # --- start -----------------------------------------------------------------------------------
    def start(self, model_path: str | Path, backend: str, precision: str = "fp32", threads: int | None = 1,
              scheduler_options: dict | None = None, warm: dict | None = None):
        """Start or join Ray, deploy the replicas, wait until they run; -> the deployment handle."""
        try:
            import ray
            from ray import serve
        except ImportError as exc:
            raise UserError(f"--cluster ray needs Ray Serve: pip install 'dpt-live[cluster]' ({exc})") from exc

        o = self.options
        if not ray.is_initialized():
            if o.address is None:
                # replicas import this project as the front end does, and share its artefact cache
                root = str(Path(__file__).resolve().parents[1])
                env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
                if os.environ.get("DPT_LIVE_CACHE"):
                    env["DPT_LIVE_CACHE"] = os.environ["DPT_LIVE_CACHE"]
                ray.init(num_cpus=o.local_cpus, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": env}, configure_logging=False)
            else:
                try:
                    ray.init(address=o.address, log_to_driver=False, configure_logging=False)
                except ConnectionError as exc:
                    raise UserError(f"cannot join the Ray cluster at {o.address}: {exc}") from exc
            self.started_ray = True
        t = time.perf_counter()
        if o.attach:
            try:
                self.handle = serve.get_app_handle(o.app_name)
            except Exception as exc:  # noqa: BLE001 - Serve's own error names what is missing
                raise UserError(f"--ray-attach: no Serve application {o.app_name!r} on the cluster ({exc})") from exc
        else:
            self.started_serve = not _serve_running()
            serve.start(proxy_location="Disabled")  # no HTTP proxy: the front end calls through the handle
            app = build_app({"model": str(model_path), "backend": backend, "precision": precision, "threads": threads,
                             "scheduler_options": scheduler_options or {}, "warm": warm, "replicas": o.replicas,
                             "autoscale": o.autoscale, "target_in_flight": o.target_in_flight,
                             "replica_cpus": o.replica_cpus, "replica_gpus": o.replica_gpus,
                             "health_period_s": o.health_period_s, "health_timeout_s": o.health_timeout_s})
            self.handle = serve.run(app, name=o.app_name, route_prefix=None)
        log.info("ray serve: %s ready in %.1f s", self.describe(), time.perf_counter() - t)
        self.poll()
        self._monitor = threading.Thread(target=self._watch, name="ray-cluster-health", daemon=True)
        self._monitor.start()
        return self.handle

    def describe(self) -> str:
        o = self.options
        n = f"autoscale {o.autoscale[0]}:{o.autoscale[1]}" if o.autoscale else f"{o.replicas} replica(s)"
        return f"app {o.app_name!r}, {n}, on {'a local Ray' if o.address is None else o.address}"

    # --- health ----------------------------------------------------------------------------------
    def health(self) -> dict:
        """{"kind": "ray", "replicas": N, "healthy": H}: N the replicas the deployment has or is
        starting (its target), H those running (passing their health checks)."""
        return dict(self._health)

    def poll(self) -> dict:
        from ray import serve

        try:
            app = serve.status().applications.get(self.options.app_name)
            states = {} if app is None else dict(app.deployments[DEPLOYMENT].replica_states)
        except Exception as exc:  # noqa: BLE001 - the controller unreachable: report nothing healthy
            log.warning("ray serve status: %s", exc)
            states = {}
        healthy = states.get("RUNNING", 0)
        wanted = sum(n for s, n in states.items() if s != "STOPPING")
        o = self.options
        target = wanted if o.attach else o.replicas if not o.autoscale else max(wanted, o.autoscale[0])
        self._health = {"kind": "ray", "replicas": max(target, healthy), "healthy": healthy, "states": states}
        return self.health()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            self.poll()

    def replica_actors(self) -> list[str]:
        """The Ray actor names of this application's replicas (namespace "serve")."""
        import ray

        prefix = f"SERVE_REPLICA::{self.options.app_name}#"
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))

    # --- stop ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Delete the application; shut Serve and Ray down when this process started them."""
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(5)
        try:
            import ray
            from ray import serve
        except ImportError:
            return
        if not ray.is_initialized():
            return
        try:
            if self.started_serve:
                serve.shutdown()
            elif self.handle is not None and not self.options.attach:
                serve.delete(self.options.app_name)
        except Exception as exc:  # noqa: BLE001 - shutting down: Ray goes next anyway
            log.warning("ray serve shutdown: %s", exc)
        if self.started_ray:
            ray.shutdown()
        self.handle = None


def _serve_running() -> bool:
    import ray

    return any(a["name"] == "SERVE_CONTROLLER_ACTOR" for a in ray.util.list_named_actors(all_namespaces=True))


def start_remote_scheduler(options: ClusterOptions, loaded, backend: str = "torch", precision: str = "fp32",
                           threads: int | None = 1, scheduler_options: dict | None = None, warm: dict | None = None,
                           step_timeout_s: float = 1.0, retries: int = 2):
    """(RayCluster, RemoteScheduler): the replicas deployed and a scheduler whose sessions' steps
    run on them. Close the scheduler, then the cluster."""
    from server.remote_scheduler import RemoteScheduler

    scheduler_options = dict(scheduler_options or {})
    cluster = RayCluster(options)
    try:
        handle = cluster.start(loaded.path, backend, precision, threads, scheduler_options, warm)
        scheduler = RemoteScheduler(handle, loaded.model, latency_budget_ms=scheduler_options.get("latency_budget_ms", 250.0),
                                    shed=scheduler_options.get("shed", True), step_timeout_s=step_timeout_s,
                                    retries=retries, health=cluster.health)
    except BaseException:
        cluster.close()
        raise
    return cluster, scheduler
