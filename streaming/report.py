"""Collect a run's frames and step timings; write the npz (animate's layout plus streaming keys) and
the latency report."""

from __future__ import annotations

import numpy as np

from streaming.metrics import percentiles_ms, replay_latency, seam_smoothness
from streaming.session import Frame, StepInfo, StreamSession


class StreamRecorder:
    def __init__(self):
        self.frames: list[Frame] = []
        self.steps: list[StepInfo] = []

    def on_frames(self, frames: list[Frame]) -> None:
        self.frames.extend(frames)

    def on_step(self, info: StepInfo) -> None:
        self.steps.append(info)

    def arrays(self, shape_raw: np.ndarray) -> dict[str, np.ndarray]:
        """exp (T,50), pose (T,6), shape (T,100) as `animate` writes them, plus audio_time,
        emit_time, arrival_time (T,) in seconds and eyes (T,4) when eyes are on."""
        f = self.frames
        out = {"exp": np.stack([x.exp for x in f]).astype(np.float32),
               "pose": np.stack([x.pose for x in f]).astype(np.float32),
               "shape": np.tile(np.asarray(shape_raw, np.float32), (len(f), 1)),
               "audio_time": np.array([x.audio_time for x in f]),
               "emit_time": np.array([x.emit_time for x in f]),
               "arrival_time": np.array([x.arrival_time for x in f])}
        if f[0].eyes is not None:
            out["eyes"] = np.stack([x.eyes for x in f]).astype(np.float32)
        return out

    def report(self, session: StreamSession, audio_seconds: float, wall_s: float,
               measured_latency: bool) -> dict:
        """measured_latency: audio arrived in real time, so emit - arrival is the real latency.
        The replayed latency (streaming/metrics.py) is always given as the estimate from compute."""
        compute = [s.compute_s for s in self.steps]
        motion = np.stack([x.motion for x in self.frames])
        replayed = replay_latency(compute, session.spec, len(self.frames))
        return {
            "audio_seconds": round(audio_seconds, 3),
            "frames": len(self.frames),
            "steps": len(self.steps),
            "window": session.spec.describe(),
            "step_compute_ms": percentiles_ms(compute),
            "frame_latency_ms": percentiles_ms([x.latency for x in self.frames]) if measured_latency else None,
            "replayed_frame_latency_ms": percentiles_ms(replayed),
            "real_time_factor": round(sum(compute) / audio_seconds, 4) if audio_seconds else None,
            "wall_seconds": round(wall_s, 3),
            "seams": seam_smoothness(motion, session.spec.hop),
            "audio_input": {"nonfinite_samples": session.conditioner.nonfinite,
                            "clipped_blocks": session.conditioner.clipped_blocks},
        }
