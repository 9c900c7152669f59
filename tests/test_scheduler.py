"""The batching scheduler: runtimes with a batch axis, the batched guided denoiser, sessions served
by one scheduler equal to each alone (torch and ONNX Runtime; teacher DDIM and DDPM, student),
faults staying in their session, the shedding policy and its effect on a session, shutdown."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_in_threads

from diffposetalk.batching import BatchedGuidedDenoiser, WindowJob, sample_windows
from diffposetalk.errors import UserError
from diffposetalk.model import Guidance, WindowCondition
from diffposetalk.sampler import DDIMSampler, DDPMSampler, RandomNoise
from diffposetalk.synth_audio import speechlike
from engines.artefacts import ArtefactLookup
from engines.networks import TorchNetworks, backend_unavailable
from export.prepare import OnDemandArtefacts, open_networks
from streaming.factory import build_session, make_scheduler
from streaming.runner import stream_array
from streaming.scheduler import (
    SCALE_MIN,
    SCALE_ONE,
    BatchScheduler,
    CostModel,
    Outcome,
    Pending,
    SchedulerClosed,
    plan_batch,
)
from streaming.session import StreamConfig

BACKENDS = ["torch"] + (["onnxruntime"] if backend_unavailable("onnxruntime") is None else [])
TOL = 1e-5  # batched vs alone: the same networks, only the batch differs


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """Every export of this module goes to a temporary cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPT_LIVE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield




# --- the policy ------------------------------------------------------------------------------------

def linear_cost(per_row: float, fixed: float = 0.0):
    return lambda group, rows: fixed + per_row * rows


def test_plan_batch_earliest_deadline_first_within_a_group():
    pending = [Pending(5.0, "a"), Pending(2.0, "b"), Pending(1.0, "a"), Pending(3.0, "a")]
    plan = plan_batch(0.0, pending, linear_cost(0.1), max_batch=8)
    assert plan.run == [2, 0, 3] or plan.run == [2, 3, 0]
    assert plan.run[:2] == [2, 3] and plan.steps == 1 and plan.drop == []
    # max_batch caps the windows of a call
    assert plan_batch(0.0, pending, linear_cost(0.1), max_batch=2).run == [2, 3]


def test_plan_batch_drops_what_cannot_make_it_even_alone():
    pending = [Pending(0.05, "a"), Pending(1.0, "a"), Pending(0.05, "a", sheddable=False)]
    plan = plan_batch(0.0, pending, linear_cost(0.1), max_batch=8)
    assert plan.drop == [0]  # late whatever happens; the unsheddable one is never dropped
    assert sorted(plan.run) == [1, 2]


def test_plan_batch_grows_only_while_every_member_makes_its_deadline():
    # 0.1 s per window: the head (due 0.25) allows two windows in its call
    pending = [Pending(0.25, "a"), Pending(0.9, "a"), Pending(0.9, "a"), Pending(0.9, "a")]
    plan = plan_batch(0.0, pending, linear_cost(0.1), max_batch=8)
    assert len(plan.run) == 2 and plan.run[0] == 0 and plan.drop == []


def test_plan_batch_sheds_steps_before_dropping():
    # a pass of one window takes 0.09 s, of two 0.1 s: 4 DDIM steps miss 0.3, 2 steps make it
    cost = linear_cost(0.01, fixed=0.08)
    head = Pending(0.3, "m", steps=4, fewer=(2, 1))
    full = Pending(5.0, "m", steps=4, fewer=(2, 1))  # makes it in full: not pulled into a shortened call
    late = Pending(0.32, "m", steps=4, fewer=(2, 1))  # late in full too: joins the shortened call
    plan = plan_batch(0.0, [head, full, late], cost, max_batch=8)
    assert plan.steps == 2 and plan.run == [0, 2] and plan.drop == []
    # nothing late: full steps
    assert plan_batch(0.0, [full], cost, max_batch=8).steps == 4
    # too late even at one step: dropped
    assert plan_batch(0.0, [Pending(0.05, "m", steps=4, fewer=(2, 1))], cost, 8).drop == [0]


def test_plan_batch_drops_what_could_not_start_after_this_call_in_time():
    # the head's call takes 0.5 s; the other (another group) could only start after it and would
    # then be late: it is dropped now, while its continuation can still go out in time
    pending = [Pending(0.52, "a", rows=5), Pending(0.55, "b")]
    plan = plan_batch(0.0, pending, linear_cost(0.1), max_batch=8)
    assert plan.run == [0] and plan.drop == [1]
    # with another worker free now it is kept for that worker
    plan = plan_batch(0.0, pending, linear_cost(0.1), max_batch=8, others_free_at=0.0)
    assert plan.run == [0] and plan.drop == []


def test_plan_batch_finishes_started_steps_first_and_leaves_time_for_the_next_call():
    motion = ("m", 1, 1)  # an audio request's step continues with a one-window motion call
    audio = [Pending(1.0, "a", then=motion) for _ in range(6)]
    started = Pending(1.0, "m")  # a step whose audio is done: at an equal deadline it goes first
    plan = plan_batch(0.0, [*audio, started], linear_cost(0.1), max_batch=8)
    assert plan.run == [6]
    # audio windows join only while their motion call (0.1 s per window) and the sessions'
    # turnaround (0.05 s) still fit: 0.1·n + 0.05 + 0.1·n <= 1.0 -> n = 4
    plan = plan_batch(0.0, audio, linear_cost(0.1), max_batch=8, turnaround=0.05)
    assert len(plan.run) == 4 and plan.drop == []
    # a call grows no longer than max_call_s
    plan = plan_batch(0.0, audio, linear_cost(0.1), max_batch=8, max_call_s=0.25)
    assert len(plan.run) == 2


def test_cost_model_fits_calls():
    cost = CostModel()
    assert cost("g", 4) == 0.0
    cost.observe("g", 2, 0.2)
    # one size seen: a power law with SCALE_ONE (a small batch is mostly per-call overhead)
    assert cost("g", 4) == pytest.approx(0.2 * 2 ** SCALE_ONE)
    assert cost("g", 1) == pytest.approx(0.2 / 2 ** SCALE_ONE)
    for rows in (2, 4, 8, 16):
        cost.observe("h", rows, 0.01 + 0.002 * rows)
    assert cost("h", 4) == pytest.approx(0.018)
    assert cost("h", 6) == pytest.approx(0.022)  # between observed sizes: interpolated
    # beyond: the power law through the two nearest sizes
    assert cost("h", 32) == pytest.approx(0.042 * 2 ** math.log2(0.042 / 0.026))
    assert cost("h", 1) == pytest.approx(0.014 / 2 ** math.log2(0.018 / 0.014))
    cost.observe("flat", 1, 0.01)
    cost.observe("flat", 2, 0.01)  # no growth seen: still at least rows ** SCALE_MIN
    assert cost("flat", 8) == pytest.approx(0.01 * 4 ** SCALE_MIN)
    cost.observe("h", 4, 0.028)  # recent calls weigh more
    assert 0.018 < cost("h", 4) < 0.028


def test_a_cost_model_that_saw_only_single_rows_still_tries_a_batch():
    """The trap seen on a loaded machine: every call one row at 10 ms (contended); proportional
    extrapolation made three rows 30 ms, over a 25 ms longest call, so no batch was ever tried."""
    cost = CostModel()
    for _ in range(20):
        cost.observe("motion", 1, 0.010)
    motion = [Pending(deadline=1.0, group="motion") for _ in range(8)]
    plan = plan_batch(0.0, motion, cost, max_batch=32, max_call_s=0.025)
    assert len(plan.run) >= 4 and plan.drop == []


def test_a_slow_first_call_of_a_new_batch_size_does_not_lock_calls_at_batch_1():
    """Seen at start-up with 32 streams: the first call over 8 first chunks took 200 ms (a new
    shape's first run, sessions still being built); believed, it made every batch look slower
    than its rows one by one, every later call ran one row and almost every step was shed. A
    call over more rows is never estimated slower than fewer-row calls back to back."""
    cost = CostModel()
    for _ in range(20):
        cost.observe("stream", 1, 0.001)
    cost.observe("stream", 8, 0.200)
    assert cost("stream", 8) <= 8 * 0.001 + 1e-12 and cost("stream", 32) <= 32 * 0.001 + 1e-12
    audio = [Pending(deadline=0.1, group="stream") for _ in range(16)]
    plan = plan_batch(0.0, audio, cost, max_batch=32, max_call_s=0.025)
    assert len(plan.run) >= 8 and plan.drop == []


def test_an_outcome_is_set_once_and_awaited_from_another_thread():
    waiting = Outcome()
    with pytest.raises(TimeoutError):
        waiting.result(timeout=0.01)  # nothing set yet
    threading.Timer(0.05, waiting.set_result, args=("rows",)).start()
    assert waiting.result(timeout=5) == "rows"
    waiting.set_exception(RuntimeError("late"))  # a second outcome is ignored
    assert waiting.result() == "rows" and waiting.result(timeout=0) == "rows"
    failed = Outcome()
    failed.set_exception(ValueError("bad window"))
    for _ in range(2):  # every call raises the request's own error
        with pytest.raises(ValueError, match="bad window"):
            failed.result(timeout=0)


def test_a_cost_estimate_is_reused_briefly_and_refreshed_by_a_call():
    now = [0.0]
    cost = CostModel(stale_tau_s=1.0, clock=lambda: now[0])
    cost.observe("g", 4, 0.01)
    cost.observe("g", 4, 2.0)
    first = cost("g", 4)
    now[0] = 0.001  # within the reuse period: the same estimate
    assert cost("g", 4) == first
    cost.observe("g", 4, 0.01)  # a new observation is seen at once
    assert cost("g", 4) < first


def test_a_stale_cost_estimate_relaxes_to_the_fastest_call_seen():
    """After a stall (another process had the CPU) one slow call inflates the estimate; if no call
    ran again the scheduler would shed every request on it forever. Unrefreshed, it relaxes."""
    now = [0.0]
    cost = CostModel(stale_tau_s=1.0, clock=lambda: now[0])
    cost.observe("g", 4, 0.01)
    cost.observe("g", 4, 2.0)  # the stall
    inflated = cost("g", 4)
    assert inflated > 0.3
    now[0] = 1.0
    assert cost("g", 4) == pytest.approx(0.01 + (inflated - 0.01) * np.exp(-1.0))
    now[0] = 10.0
    assert cost("g", 4) == pytest.approx(0.01, abs=1e-4)
    cost.observe("g", 4, 0.5)  # a new observation counts in full again
    assert cost("g", 4) > 0.05


# --- the batched guided denoiser -------------------------------------------------------------------

def conditions(cfg, seed, style=True):
    g = torch.Generator().manual_seed(seed)
    L, F = cfg.n_motions, cfg.feature_dim
    return WindowCondition(torch.randn(1, L, F, generator=g), torch.randn(1, cfg.shape_dim, generator=g),
                           torch.randn(1, cfg.d_style, generator=g) if style else None,
                           torch.randn(1, cfg.n_prev_motions, cfg.motion_dim, generator=g),
                           torch.randn(1, cfg.n_prev_motions, F, generator=g),
                           (torch.rand(1, L, generator=g) > 0.3).float() if cfg.use_indicator else None)


GUIDANCES = [Guidance(), Guidance(scales={"audio": 2.0, "style": 0.5}),
             Guidance(scales={"audio": 1.3, "style": 2.5}, mode="independent", dynamic_threshold=(0.9, 0.5, 2.0))]


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_batched_guided_denoiser_equals_each_alone(which, request):
    loaded = request.getfixturevalue(which)
    model, cfg = loaded.model, loaded.config
    parts = [model.guided_denoiser(conditions(cfg, i, style=i != 1), GUIDANCES[i]) for i in range(3)]
    if which == "teacher":
        assert [p.rows_per_window for p in parts] == [3, 2, 3]  # no style: one pass fewer
    x = torch.randn(3, cfg.n_motions, cfg.motion_dim, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        batched = BatchedGuidedDenoiser(parts, model.denoising_net)(x, 7)
        alone = torch.cat([p(x[i:i + 1], 7) for i, p in enumerate(parts)])
        assert (batched - alone).abs().max() < TOL
        # whole sampling loops, each window with its own x_T and (DDPM) its own noise draws
        for sampler in (DDIMSampler(3), DDPMSampler()):
            if which == "student" and sampler.stochastic:
                continue
            jobs = [WindowJob(p, x[i:i + 1], RandomNoise(10 + i), window=i) for i, p in enumerate(parts)]
            out = sample_windows(model, sampler, jobs, model.denoising_net)
            for i, p in enumerate(parts):
                ref = sampler.sample(model, p, x[i:i + 1], RandomNoise(10 + i), window=i)
                assert (out[i] - ref).abs().max() < TOL, sampler.name


# --- runtimes with a batch axis --------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_audio_features_batch_equals_single_windows(backend, teacher):
    nets = open_networks(teacher, backend, "fp32", threads=1)
    S = 14 * 640
    audio = np.stack([speechlike(S / 16000, seed=s) for s in range(3)]).astype(np.float32)
    audio = (audio - audio.mean(1, keepdims=True)) / audio.std(1, keepdims=True)
    batched = nets.audio_features_batch(audio)
    assert batched.shape == (3, 14, teacher.config.feature_dim)
    for i in range(3):
        assert np.abs(batched[i] - nets.audio_features(audio[i])).max() < TOL
    assert np.abs(batched - TorchNetworks(teacher.model).audio_features_batch(audio)).max() < 1e-4


@pytest.mark.skipif("onnxruntime" not in BACKENDS, reason="onnxruntime not installed")
def test_fixed_batch_audio_graph_is_exported_again(teacher, tmp_path):
    S = 10 * 640
    made = OnDemandArtefacts(teacher, tmp_path)
    path = made.onnx("audio", "fp32", S)
    side = Path(str(path) + ".json")
    record = json.loads(side.read_text())
    assert record["inputs"]["audio"] == ["N", S]
    record["inputs"]["audio"] = [1, S]  # as an earlier version recorded it
    side.write_text(json.dumps(record))
    plain = ArtefactLookup(made.key, tmp_path)
    assert plain.find_onnx("audio", "fp32", S) is None
    with pytest.raises(UserError, match="out of date"):
        plain.onnx("audio", "fp32", S)
    assert made.onnx("audio", "fp32", S) == path  # exported again, with a batch axis
    assert json.loads(side.read_text())["inputs"]["audio"] == ["N", S]


# --- sessions on a scheduler equal each alone ------------------------------------------------------

CONFIG = StreamConfig(80, 80, 400)


def stream_specs(loaded):
    rng = np.random.default_rng(0)
    return [dict(style=loaded.styles["calm"], guidance=Guidance(), seed=0, audio=speechlike(0.9, seed=1)),
            dict(style=None, guidance=Guidance(scales={"audio": 2.0, "style": 1.0}), seed=5,
                 audio=speechlike(0.7, seed=2)),
            dict(style=rng.normal(size=loaded.config.d_style).astype(np.float32),
                 guidance=Guidance(scales={"audio": 1.5, "style": 2.5}, dynamic_threshold=(0.9, 1.0, 4.0)),
                 seed=9, audio=speechlike(1.1, seed=3))]


def config_for(spec):
    return StreamConfig(CONFIG.hop_ms, CONFIG.lookahead_ms, CONFIG.context_ms, seed=spec["seed"])


def alone(loaded, sampler, specs, backend):
    out = []
    for spec in specs:
        session = build_session(loaded, sampler, spec["guidance"], config_for(spec), spec["style"], backend=backend)
        out.append(np.stack([f.motion for f in stream_array(session, spec["audio"], 320)]))
    return out


def concurrently(scheduler, loaded, sampler, specs, break_session: int | None = None):
    """Every spec's stream fed at once from its own thread through one scheduler -> (motion per
    stream or the exception it raised)."""
    sessions = [build_session(loaded, sampler, s["guidance"], config_for(s), s["style"], scheduler=scheduler)
                for s in specs]
    if break_session is not None:  # a window that cannot be stacked with the others' nor run
        motion = sessions[break_session].motion
        make = motion.window_job

        def broken(*args):
            job = make(*args)
            d = job.denoiser
            d.inputs = (d.inputs[0][:, :-1], *d.inputs[1:])
            return job

        motion.window_job = broken
    results: list = [None] * len(specs)
    start = threading.Barrier(len(specs))

    def run(i):
        start.wait()
        try:
            results[i] = np.stack([f.motion for f in stream_array(sessions[i], specs[i]["audio"], 320)])
        except Exception as exc:  # noqa: BLE001 - returned for the test to look at
            results[i] = exc.with_traceback(None)
            sessions[i] = None  # a broken session goes away: calls stop waiting for its requests

    run_in_threads(run, len(specs))
    return results


CASES = [("teacher", DDIMSampler(2)), ("teacher", DDPMSampler()), ("student", DDIMSampler(1))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which,sampler", CASES, ids=["teacher-ddim2", "teacher-ddpm", "student"])
def test_sessions_on_one_scheduler_equal_each_alone(backend, which, sampler, request):
    """Different audio, styles (one without), guidance scales and seeds; fed concurrently."""
    loaded = request.getfixturevalue(which)
    specs = stream_specs(loaded)
    ref = alone(loaded, sampler, specs, backend)
    # a long gather window: a call waits until every session has its request in
    with make_scheduler(loaded, backend, gather_ms=500, latency_budget_ms=1e7) as scheduler:
        out = concurrently(scheduler, loaded, sampler, specs)
        stats = scheduler.stats()
    for r, o in zip(ref, out):
        assert not isinstance(o, Exception), o
        assert o.shape == r.shape and np.abs(o - r).max() < TOL
    # the windows really shared calls; nothing was shed
    assert max(stats["batch_sizes"]["audio"]) == 3 and max(stats["batch_sizes"]["motion"]) == 3
    assert stats["shed"] == {"dropped": 0, "steps": 0} and stats["errors"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_window_stays_in_its_session(backend, teacher):
    specs = stream_specs(teacher)
    specs[2]["style"] = np.full(teacher.config.d_style, np.nan, np.float32)
    ref = alone(teacher, DDIMSampler(2), specs[:2], backend)
    with make_scheduler(teacher, backend, gather_ms=500, latency_budget_ms=1e7) as scheduler:
        out = concurrently(scheduler, teacher, DDIMSampler(2), specs)
        assert max(scheduler.stats()["batch_sizes"]["motion"]) == 3  # it shared calls with the others
    assert not np.isfinite(out[2]).all()
    for r, o in zip(ref, out[:2]):
        assert np.abs(o - r).max() < TOL


def test_a_failing_request_fails_only_its_session(teacher):
    specs = stream_specs(teacher)
    ref = alone(teacher, DDIMSampler(2), specs[:2], "torch")
    with make_scheduler(teacher, "torch", gather_ms=500, latency_budget_ms=1e7) as scheduler:
        out = concurrently(scheduler, teacher, DDIMSampler(2), specs, break_session=1)
        stats = scheduler.stats()
    assert isinstance(out[1], RuntimeError)
    assert np.abs(out[0] - ref[0]).max() < TOL
    assert np.abs(out[2] - alone(teacher, DDIMSampler(2), specs[2:], "torch")[0]).max() < TOL
    assert stats["errors"] >= 1


# --- overload: explicit shedding, and back ---------------------------------------------------------

def feed(session, audio):
    frames = []
    for i in range(0, len(audio), 320):
        frames += session.feed(audio[i:i + 320])
    return frames


def test_dropped_steps_continue_the_session_and_recover(teacher):
    audio = speechlike(2.4, seed=4)
    second = 16000
    with make_scheduler(teacher, "torch", latency_budget_ms=1e7) as scheduler:
        session = build_session(teacher, DDIMSampler(2), Guidance(), CONFIG, teacher.styles["calm"],
                                scheduler=scheduler)
        frames = feed(session, audio[:second])
        assert all(f.shed is None for f in frames)
        pending = session._pending.copy()  # the last step's prediction of the next frames
        scheduler.latency_budget_s = -1.0  # every step is past its deadline: overload
        held = feed(session, audio[second:second + 8000])
        scheduler.latency_budget_s = 1e4  # load falls
        after = feed(session, audio[second + 8000:]) + session.finish()
        stats = scheduler.stats()
    assert held and all(f.shed == "dropped" for f in held)
    assert all(f.shed is None for f in after)
    motion = np.stack([f.motion for f in frames + held + after])
    assert [f.index for f in frames + held + after] == list(range(len(motion))) and len(motion) == 60
    assert np.isfinite(motion).all()
    # the first dropped step shows the previous step's prediction, later ones hold the last frame
    np.testing.assert_array_equal(np.stack([f.motion for f in held[:2]]), pending)
    for a, b in zip(held[1:], held[2:]):
        np.testing.assert_array_equal(a.motion, b.motion)
    steps_dropped = len(held) // CONFIG.spec().hop
    assert session.shed_steps == {"steps": 0, "dropped": steps_dropped}
    assert stats["shed"]["dropped"] == steps_dropped


def test_fewer_sampler_steps_first_then_full_again(teacher):
    sampler = DDIMSampler(4)
    with make_scheduler(teacher, "torch", latency_budget_ms=2500, margin_ms=0) as scheduler:
        group, steps, fewer = scheduler.motion_group(sampler)
        assert steps == 4 and fewer == (2, 1)
        # the scheduler believes a pass of a window takes 1 s: 4 steps miss 2.5 s, 2 make it
        scheduler.cost.observe(group, 3, 1.0)
        session = build_session(teacher, sampler, Guidance(), CONFIG, teacher.styles["calm"], scheduler=scheduler)
        frames = feed(session, speechlike(1.0, seed=5))
        stats = scheduler.stats()
    assert frames[0].shed == "steps" and frames[1].shed == "steps"
    assert frames[-1].shed is None  # real calls taught it better: full steps again
    assert session.shed_steps["steps"] >= 1 and stats["shed"]["steps"] == session.shed_steps["steps"]
    assert np.isfinite(np.stack([f.motion for f in frames])).all()


# --- life and figures ------------------------------------------------------------------------------

def test_close_refuses_new_work_and_ends_the_workers(teacher):
    scheduler = BatchScheduler(teacher.model, TorchNetworks(teacher.model), workers=2)
    session = build_session(teacher, DDIMSampler(1), Guidance(), CONFIG, None, scheduler=scheduler)
    feed(session, speechlike(0.6, seed=6))
    scheduler.close()
    assert not any(t.is_alive() for t in scheduler._threads)
    with pytest.raises(SchedulerClosed):
        feed(session, speechlike(0.3, seed=7))
    with pytest.raises(SchedulerClosed):
        build_session(teacher, DDIMSampler(1), Guidance(), CONFIG, None, scheduler=scheduler)


def test_stats_and_metrics(teacher):
    with make_scheduler(teacher, "torch", latency_budget_ms=1e7) as scheduler:
        session = build_session(teacher, DDIMSampler(2), Guidance(), CONFIG, None, scheduler=scheduler)
        assert session.backend == "torch (fp32)" and session.batched
        feed(session, speechlike(0.8, seed=8))
        stats = scheduler.stats()
        text = scheduler.prometheus()
    assert stats["sessions"] == 1 and stats["queue_depth"] == 0 and stats["errors"] == 0
    assert stats["calls"]["audio"] >= 9 and stats["calls"]["motion"] >= 9
    assert set(stats["batch_sizes"]["motion"]) == {1}
    assert stats["call_ms"]["motion"]["p50"] > 0 and stats["request_ms"]["max"] > 0
    for name in ("dpt_scheduler_sessions 1", 'dpt_scheduler_calls_total{kind="audio",windows="1"}',
                 'dpt_scheduler_shed_steps_total{how="dropped"} 0', "dpt_scheduler_queue_depth 0"):
        assert name in text
