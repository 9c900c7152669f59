"""`serve --cluster ray`: sessions whose steps run on Ray Serve replicas (server/cluster.py,
server/remote_scheduler.py, server/replica.py), on a real local Ray (2 CPUs, no dashboard) started
once for the module: frames equal the in-process engine's, a killed or hung replica costs a
bounded gap while the sessions go on, /healthz and /metrics report the replicas."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from diffposetalk.model import Guidance  # noqa: E402
from diffposetalk.sampler import DDIMSampler, DDPMSampler  # noqa: E402
from diffposetalk.synth_audio import speechlike  # noqa: E402
from streaming.factory import build_session  # noqa: E402
from streaming.runner import stream_array  # noqa: E402
from streaming.session import StreamConfig  # noqa: E402

TOL = 1e-5
STEP_TIMEOUT_S = 2.0  # generous: this suite runs on busy 2-core machines
RETRIES = 2


@pytest.fixture(scope="module")
def cluster(teacher):
    """Two replicas of the tiny teacher on a local Ray; the front end's scheduler for them."""
    from server.cluster import ClusterOptions, start_remote_scheduler

    if ray.is_initialized():  # another module's Ray: this one starts its own
        ray.shutdown()
    options = ClusterOptions(replicas=2, local_cpus=2, replica_cpus=0.5, health_period_s=1.0)
    warm = {"window_samples": StreamConfig(80, 80, 400).spec().window_samples, "sampler": DDIMSampler(2)}
    cl, scheduler = start_remote_scheduler(options, teacher, "torch", threads=1, warm=warm,
                                           scheduler_options={"latency_budget_ms": 1e7},
                                           step_timeout_s=STEP_TIMEOUT_S, retries=RETRIES)
    yield cl, scheduler
    scheduler.close()
    cl.close()
    assert not ray.is_initialized()


def specs(loaded):
    return [dict(style=loaded.styles["calm"], guidance=Guidance(), seed=0, audio=speechlike(0.9, seed=1)),
            dict(style=None, guidance=Guidance(scales={"audio": 2.0, "style": 1.0}), seed=5,
                 audio=speechlike(0.7, seed=2))]


def motion_of(loaded, sampler, spec, scheduler=None, on_step=None):
    config = StreamConfig(80, 80, 400, seed=spec["seed"])
    session = build_session(loaded, sampler, spec["guidance"], config, spec["style"], scheduler=scheduler,
                            on_step=on_step)
    return np.stack([f.motion for f in stream_array(session, spec["audio"], 320)])


@pytest.mark.parametrize("sampler", [DDIMSampler(2), DDPMSampler()], ids=["ddim2", "ddpm"])
def test_frames_through_ray_equal_the_in_process_engine(cluster, teacher, sampler):
    """DDPM: the noise generator's state travels with each window and comes back advanced."""
    _, scheduler = cluster
    for spec in specs(teacher):
        ref = motion_of(teacher, sampler, spec)
        out = motion_of(teacher, sampler, spec, scheduler)
        assert out.shape == ref.shape and np.abs(out - ref).max() < TOL
    # nothing shed (no deadline here); a retry after a timeout on a loaded machine changes nothing
    assert scheduler.stats()["shed"] == {"dropped": 0, "steps": 0}


def test_bad_input_fails_only_its_request(cluster):
    _, scheduler = cluster
    before = scheduler.stats()["faults"]
    with pytest.raises(ValueError):
        scheduler.features(np.zeros(100, np.float32))  # not whole frames: refused here
    with pytest.raises(ValueError, match="motion request: audio_feat has shape"):  # refused by the replica: its error, no retry
        scheduler.sample_arrays({"audio_feat": np.zeros((8, 32), np.float32)}, {"sampler": DDIMSampler(1),
                                "guidance": Guidance(), "step": 0})
    assert scheduler.stats()["faults"] == before  # answered at once, not retried


def stream_two(teacher, scheduler, fault, n_seconds=6.0):
    """Two sessions streaming long audio through the cluster; ``fault()`` runs once both are
    under way -> (per session: step end times, frame counts, shed steps), when the fault ran."""
    results: list = [None, None]
    times: list[list[float]] = [[], []]
    started = threading.Barrier(3)

    def run(i):
        spec = specs(teacher)[i]
        spec["audio"] = speechlike(n_seconds, seed=10 + i)
        steps = times[i]
        first = []

        def on_step(info):
            steps.append(time.perf_counter())
            if len(steps) == 3:
                first.append(started.wait())

        config = StreamConfig(80, 80, 400, seed=spec["seed"])
        session = build_session(teacher, DDIMSampler(2), spec["guidance"], config, spec["style"],
                                scheduler=scheduler, on_step=on_step)
        frames = stream_array(session, spec["audio"], 320)
        results[i] = (len(frames), dict(session.shed_steps), [f.shed for f in frames])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    started.wait()
    at = time.perf_counter()
    fault()
    for t in threads:
        t.join(60)
    return results, times, at


def test_a_killed_replica_costs_a_bounded_gap(cluster, teacher):
    cl, scheduler = cluster
    victim = cl.replica_actors()[0]
    assert victim.rsplit("#", 1)[1] in scheduler.stats()["replicas"]  # it has been serving steps
    results, times, at = stream_two(teacher, scheduler, lambda: ray.kill(ray.get_actor(victim, namespace="serve")))
    for (n, _, _), steps in zip(results, times):
        assert n == 6 * 25  # every frame of the audio went out: no sequence gap
        # the worst pause between two steps: a timeout per attempt at most
        assert np.diff(steps).max() < STEP_TIMEOUT_S * (RETRIES + 1) + 1.0
        assert steps[-1] > at  # the stream went on after the kill
    # Ray Serve replaces the replica
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        if cl.health()["healthy"] == 2 and victim not in cl.replica_actors():
            break
        time.sleep(0.25)
    recovered = time.perf_counter() - at
    assert cl.health()["healthy"] == 2 and victim not in cl.replica_actors(), (cl.health(), cl.replica_actors())
    print(f"\nkill: worst gap between steps {[round(float(np.diff(s).max()) * 1000) for s in times]} ms, "
          f"faults {scheduler.stats()['faults']}, 2 healthy replicas again {recovered:.1f} s after the kill")


def test_hung_replicas_are_timed_out_and_the_sessions_go_on(cluster, teacher):
    """Every replica stalls for 3 s (as a hung runtime would): attempts time out, the steps
    are retried, and what cannot be done in time goes out as continuation frames (degraded)."""
    cl, scheduler = cluster
    before = scheduler.stats()["faults"].get("timeout", 0)

    def hold_all():
        held = set()
        for _ in range(40):  # the handle routes each call to some replica: until both have one
            held.add(cl.handle.hold.remote(1.5 * STEP_TIMEOUT_S).result(timeout_s=10))
            if len(held) == 2:
                return
        raise AssertionError(f"could not reach both replicas: {held}")

    results, times, _ = stream_two(teacher, scheduler, hold_all, n_seconds=4.0)
    for (n, _, _), steps in zip(results, times):
        assert n == 4 * 25
        assert np.diff(steps).max() < STEP_TIMEOUT_S * (RETRIES + 1) + 1.0
    assert scheduler.stats()["faults"].get("timeout", 0) > before
    print(f"\nhold: worst gap between steps {[round(float(np.diff(s).max()) * 1000) for s in times]} ms, "
          f"faults {scheduler.stats()['faults']}, degraded frames {[sum(x is not None for x in r[2]) for r in results]}")


def test_healthz_and_metrics_report_the_replicas(cluster, teacher):
    import asyncio

    from server.app import LiveServer
    from server.config import ServerConfig
    from server.engine import Engine

    cl, scheduler = cluster
    engine = Engine(loaded=teacher, sampler=DDIMSampler(2), config=StreamConfig(80, 80, 400), backend="torch",
                    scheduler=scheduler, cluster=cl)
    engine.probe()
    server = LiveServer(engine, ServerConfig(host="127.0.0.1", port=0, token=None), None, "none")

    async def main():
        await server.start()
        try:
            base = server.url(False)
            loop = asyncio.get_running_loop()
            health = await loop.run_in_executor(None, lambda: json.load(urllib.request.urlopen(base + "healthz")))
            metrics = await loop.run_in_executor(None, lambda: urllib.request.urlopen(base + "metrics").read().decode())
            return health, metrics
        finally:
            await server.stop()

    health, metrics = asyncio.run(main())
    assert health["cluster"] == {"kind": "ray", "replicas": 2, "healthy": 2}
    assert "dpt_cluster_replicas_healthy 2" in metrics
    for name in ("dpt_cluster_replica_in_flight{", "dpt_cluster_replica_queue_depth{", "dpt_cluster_replica_calls_total{",
                 "dpt_cluster_replica_step_seconds{"):
        assert name in metrics, name
