"""Does the mouth move with real speech and close in silence? (`dpt-live voice-check`)

Each recording is padded with silence on both sides, run through the model (offline as `animate`
does, or with --stream through the streaming session as `stream` does), and the jaw opening
pose[3] is compared with an energy VAD of the clean padded audio. Every metric's definition is
written next to its value in the JSON (DEFINITIONS) and in docs/TRAINING.md. Recordings come from
`dpt-live voices fetch` (training/real_voices.py) or any audio files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from diffposetalk.units import FRAME_SAMPLES, SAMPLE_RATE
from training.evaluate import JAW, pearson

# VAD frames are motion frames (40 ms, FRAME_SAMPLES), so VAD frame i is motion frame i
VAD_RANGE_DB = 30.0
VAD_DILATE = 3
ENVELOPE_FRAMES = 5
MOVES_MIN_RAD = 0.03
CLOSES_RATIO = 0.5
OVER_CLOSED_RAD = 0.03

DEFINITIONS = {
    "vad": f"energy VAD of the clean padded audio on {FRAME_SAMPLES * 1000 // SAMPLE_RATE} ms frames (= motion "
           f"frames): RMS per frame in dB; speech = frames within {VAD_RANGE_DB:.0f} dB of the loudest "
           f"frame, dilated by ±{VAD_DILATE} frames; silence = every other frame (includes the padding, "
           f"less the dilation). Noise and gain variants are measured against the clean clip's VAD",
    "speech_mean / speech_p90": "mean and 90th percentile of the jaw opening pose[3] (rad) over speech frames",
    "silence_mean / silence_p90 / silence_max / silence_min": "mean, 90th percentile, max and min of the "
                                                              "jaw opening pose[3] (rad) over silence frames "
                                                              "(min < 0: the jaw is pressed past closed)",
    "movement": "speech_p90 - median of the jaw opening over silence frames (rad)",
    "envelope_r": f"Pearson r over all frames between the jaw opening and the RMS envelope of the clean "
                  f"padded audio (per-frame RMS, centred moving average over {ENVELOPE_FRAMES} frames)",
    "padding_in_silence": "fraction of the padding frames that the VAD counts as silence",
    "moves": f"movement >= {MOVES_MIN_RAD} rad",
    "closes": f"silence_p90 <= {CLOSES_RATIO} x max(speech_p90, 0) (a jaw that never opens past 0 in "
              f"speech must stay at or below 0 in silence)",
    "passed": "moves and closes",
    "opens": f"informative, not part of passed: speech_p90 >= {MOVES_MIN_RAD} rad (the jaw opens past "
             f"closed, not only relative to the silence level)",
    "over_closed": f"informative, not part of passed: silence_min < -{OVER_CLOSED_RAD} rad (the jaw is "
                   f"pressed past closed in silence)",
    "speech_p20": "20th percentile of the jaw opening over speech frames (rad)",
    "rests_shut": "silence_mean < speech_p20: in silence (and in the noise of a noise variant) the jaw rests "
                  "below how far it is open in 80 % of speech",
    "variant": "clean: the recording as is; snrN: white Gaussian noise over the whole padded clip at N dB "
               "below the mean power of the recording's speech frames (seeded by --seed); pinkN: the same "
               "with pink (1/f) noise; toneN: room tone, white noise at N dBFS RMS (full scale = 1.0) over the "
               "whole padded clip, so before, under and after the speech; gainN: the padded clip scaled by N dB",
}


# --- measurements on arrays (pure numpy; tested on constructed signals) ------------------------------

def frame_rms(audio: np.ndarray) -> np.ndarray:
    """RMS of each whole 40 ms frame (a trailing partial frame is dropped, as motion frames are)."""
    n = len(audio) // FRAME_SAMPLES
    frames = np.asarray(audio[:n * FRAME_SAMPLES], dtype=np.float64).reshape(n, FRAME_SAMPLES)
    return np.sqrt(np.mean(frames ** 2, axis=1))


def speech_frames(audio: np.ndarray) -> np.ndarray:
    """Boolean speech mask per 40 ms frame; see DEFINITIONS['vad']."""
    rms = frame_rms(audio)
    if rms.size == 0 or rms.max() <= 0:
        raise UserError("the audio is silent or shorter than one 40 ms frame: nothing to check")
    db = 20 * np.log10(np.maximum(rms, 1e-10))
    loud = db >= db.max() - VAD_RANGE_DB
    kernel = np.ones(2 * VAD_DILATE + 1)
    return np.convolve(loud.astype(float), kernel, mode="same") > 0


def rms_envelope(audio: np.ndarray) -> np.ndarray:
    rms = frame_rms(audio)
    return np.convolve(rms, np.ones(ENVELOPE_FRAMES) / ENVELOPE_FRAMES, mode="same")


def jaw_metrics(jaw: np.ndarray, clean_audio: np.ndarray, pad_frames: int = 0) -> dict:
    """Jaw opening (T,) rad against the clean padded audio; ``pad_frames`` at each end are padding.
    See DEFINITIONS."""
    speech = speech_frames(clean_audio)
    env = rms_envelope(clean_audio)
    n = min(len(jaw), len(speech))
    jaw, speech, env = np.asarray(jaw[:n], dtype=np.float64), speech[:n], env[:n]
    if speech.all() or not speech.any():
        raise UserError(f"the VAD found {'no silence' if speech.all() else 'no speech'} in {n} frames: "
                        f"pad the audio with silence (--pad-s) / check it holds speech")
    sp, si = jaw[speech], jaw[~speech]
    pad = np.zeros(n, bool)
    pad[:pad_frames], pad[max(n - pad_frames, 0):] = True, True
    out = {"frames": n, "speech_frames": int(speech.sum()), "silence_frames": int((~speech).sum()),
           "padding_in_silence": float((~speech[pad]).mean()) if pad.any() else None,
           "speech_mean": float(sp.mean()), "speech_p90": float(np.percentile(sp, 90)),
           "speech_p20": float(np.percentile(sp, 20)),
           "silence_mean": float(si.mean()), "silence_p90": float(np.percentile(si, 90)),
           "silence_max": float(si.max()), "silence_min": float(si.min()),
           "movement": float(np.percentile(sp, 90) - np.median(si)),
           "envelope_r": pearson(jaw, env)}
    out["moves"] = out["movement"] >= MOVES_MIN_RAD
    out["closes"] = out["silence_p90"] <= CLOSES_RATIO * max(out["speech_p90"], 0.0)
    out["passed"] = out["moves"] and out["closes"]
    out["opens"] = out["speech_p90"] >= MOVES_MIN_RAD
    out["over_closed"] = out["silence_min"] < -OVER_CLOSED_RAD
    out["rests_shut"] = out["silence_mean"] < out["speech_p20"]
    return out


def pad_silence(audio: np.ndarray, pad_s: float) -> tuple[np.ndarray, int]:
    """Digital silence of ``pad_s`` on both sides, rounded to whole frames -> (audio, pad frames)."""
    frames = int(round(pad_s * SAMPLE_RATE / FRAME_SAMPLES))
    z = np.zeros(frames * FRAME_SAMPLES, np.float32)
    return np.concatenate([z, np.asarray(audio, np.float32), z]), frames


def variants(clean: np.ndarray, snrs: list[float], gains: list[float], seed: int, pink_snrs: list[float] = (),
             room_tones: list[float] = ()) -> list[tuple[str, np.ndarray]]:
    """(name, model input) per variant; see DEFINITIONS['variant']."""
    from training.synth.augment import coloured_noise

    out = [("clean", clean)]
    speech_power = float(np.mean(frame_rms(clean)[speech_frames(clean)] ** 2))

    def at_power(kind: str, power: float) -> np.ndarray:
        noise = coloured_noise(kind, len(clean), np.random.default_rng(seed))
        return noise * np.sqrt(power / max(float(np.mean(noise ** 2)), 1e-30))

    for kind, name, levels in (("white", "snr", snrs), ("pink", "pink", pink_snrs)):
        for snr in levels:
            out.append((f"{name}{snr:g}", (clean + at_power(kind, speech_power / 10 ** (snr / 10))).astype(np.float32)))
    for dbfs in room_tones:
        out.append((f"tone{dbfs:g}", (clean + at_power("white", 10 ** (dbfs / 10))).astype(np.float32)))
    for gain in gains:
        out.append((f"gain{gain:g}", (clean * 10 ** (gain / 20)).astype(np.float32)))
    return out


# --- running the model ---------------------------------------------------------------------------------

class JawModel:
    """The model as `animate` (offline) or `stream` (--stream) runs it, reduced to audio -> jaw (T,)."""

    def __init__(self, args):
        from streaming.setup import load_for_generation

        self.args = args
        if args.stream:
            from streaming.setup import stream_setup

            (self.loaded, self.style, self.guidance, self.sampler, self.shape_raw,
             self.config) = stream_setup(args)
        else:
            import torch

            from training.evaluate import eval_sampler

            self.loaded, style, self.guidance = load_for_generation(args)
            self.style = style.tensor
            self.sampler = eval_sampler(args.sampler, args.steps, self.loaded.model)
            self.shape_raw = torch.zeros(100)
        self.steps = len(self.sampler.timesteps(self.loaded.model))

    def jaw(self, audio: np.ndarray) -> np.ndarray:
        return self._stream(audio) if self.args.stream else self._offline(audio)

    def _offline(self, audio):
        from diffposetalk.generate import generate_motion, motion_to_arrays
        from diffposetalk.sampler import RandomNoise

        stats, cfg = self.loaded.stats, self.loaded.config
        shape = (self.shape_raw.to(self.args.device) - stats["shape_mean"]) / stats["shape_std"]
        motion = generate_motion(self.loaded.model, audio, shape, self.style, self.sampler, self.guidance,
                                 RandomNoise(self.args.seed, self.args.device))
        return motion_to_arrays(motion, stats, cfg.head_pose, self.shape_raw)["pose"][0, :, JAW]

    def _stream(self, audio):
        from streaming.factory import build_session
        from streaming.report import StreamRecorder
        from streaming.runner import stream_array

        a = self.args
        recorder = StreamRecorder()
        session = build_session(self.loaded, self.sampler, self.guidance, self.config, self.style, self.shape_raw,
                                backend=a.backend, precision=a.precision, threads=a.threads)
        stream_array(session, audio, on_frames=recorder.on_frames)  # the whole clip at once
        return recorder.arrays(self.shape_raw.numpy())["pose"][:, JAW]


# --- the check --------------------------------------------------------------------------------------

def recordings(audio: list[Path] | None, voices: str | None) -> list[dict]:
    """[{'path', ...manifest fields}] of the ``audio`` files, else of the ``voices`` folder (a
    `voices fetch` folder; "" or None: the cache's)."""
    if audio:
        for path in audio:
            if not path.is_file():
                raise UserError(f"audio file not found: {path}")
        return [{"path": p, "file": p.name} for p in audio]
    from training.real_voices import MANIFEST, default_voices_dir

    folder = Path(voices) if voices else default_voices_dir()  # bare --voices: the cache
    manifest = folder / MANIFEST
    if manifest.is_file():
        entries = json.loads(manifest.read_text()).get("recordings", [])
        items = [dict(e, path=folder / e["file"]) for e in entries]
    else:
        items = [{"path": p, "file": p.name} for p in sorted(folder.glob("*.wav"))] if folder.is_dir() else []
    if not items:
        raise UserError(f"no recordings in {folder} (no {MANIFEST} and no .wav files): "
                        f"run `dpt-live voices fetch --out {folder}` first")
    for it in items:
        if not it["path"].is_file():
            raise UserError(f"{manifest}: lists {it['file']}, which is missing from {folder}")
    return items


def summarize(results: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(r["variant"] for r in results):
        rows = [r for r in results if r["variant"] == name]
        out[name] = {"files": len(rows), "passed": sum(r["passed"] for r in rows),
                     **{k: sum(r[k] for r in rows) for k in ("moves", "closes", "opens", "over_closed", "rests_shut")}}
        for k in ("speech_mean", "speech_p90", "speech_p20", "silence_mean", "silence_p90", "silence_max", "silence_min",
                  "movement", "envelope_r"):
            out[name][k] = float(np.mean([r[k] for r in rows]))
    return out


def _verdict(r: dict) -> str:
    if r["passed"]:
        return "yes"
    return "NO" + ("" if r["moves"] else " (still)") + ("" if r["closes"] else " (open in silence)")


def format_table(results: list[dict], summary: dict) -> str:
    head = (f"{'file':<44} {'variant':<8} {'sec':>5} {'sp.mean':>7} {'sp.p90':>7} {'si.mean':>7} {'si.p90':>7} "
            f"{'si.max':>7} {'si.min':>7} {'move':>6} {'r':>5}  pass")
    lines = [head]
    for r in results:
        lines.append(f"{r['file'][:44]:<44} {r['variant']:<8} {r['seconds']:5.1f} {r['speech_mean']:7.3f} "
                     f"{r['speech_p90']:7.3f} {r['silence_mean']:7.3f} {r['silence_p90']:7.3f} "
                     f"{r['silence_max']:7.3f} {r['silence_min']:7.3f} {r['movement']:6.3f} {r['envelope_r']:5.2f}  "
                     f"{_verdict(r)}")
    lines.append("summary (means over files; jaw in rad):")
    for name, s in summary.items():
        lines.append(f"  {name:<8} passed {s['passed']}/{s['files']} (moves {s['moves']}, closes {s['closes']}; "
                     f"opens {s['opens']}, over-closed {s['over_closed']}, rests shut {s['rests_shut']})  "
                     f"speech p90 {s['speech_p90']:.3f} p20 {s['speech_p20']:.3f}  silence mean {s['silence_mean']:.3f} p90 "
                     f"{s['silence_p90']:.3f} min {s['silence_min']:.3f}  movement {s['movement']:.3f}  "
                     f"r {s['envelope_r']:.2f}")
    return "\n".join(lines)


def voice_check(args) -> dict:
    """Run every recording (and its noise/gain variants) through the model; the result `voice-check`
    writes. ``args`` holds the `voice-check` options: the model and window settings are the ones
    streaming.setup reads (as for `animate` / `stream`), so they stay one namespace."""
    from diffposetalk.audio_io import load_audio
    from diffposetalk.paths import DEFAULT_MODEL, DEFAULT_STREAM_MODEL

    if args.model is None:
        args.model = DEFAULT_STREAM_MODEL if args.stream else DEFAULT_MODEL
    if args.threads is None:
        args.threads = 1  # small models on a shared CPU: more threads mostly wait for each other
    if args.pad_s <= 0:
        raise UserError("--pad-s must be > 0: the padding is the silence the mouth must close in")
    items = recordings(args.audio, args.voices)
    model = JawModel(args)
    results = []
    for it in items:
        recording = load_audio(it["path"])
        clean, pad_frames = pad_silence(recording, args.pad_s)
        for name, audio in variants(clean, args.noise_snr, args.gain_db, args.seed, args.pink_snr, args.room_tone):
            m = jaw_metrics(model.jaw(audio), clean, pad_frames)
            meta = {k: v for k, v in it.items() if k in ("source", "language", "speaker")}
            results.append({"file": it["file"], "variant": name,
                            "seconds": round(len(recording) / SAMPLE_RATE, 3),
                            **meta, **m})
            print(f"  {it['file']} [{name}]: movement {m['movement']:.3f} rad, silence p90 "
                  f"{m['silence_p90']:.3f}, r {m['envelope_r']:.2f} -> {'pass' if m['passed'] else 'FAIL'}",
                  flush=True)
    summary = summarize(results)
    return {"model": str(args.model), "kind": model.loaded.config.kind, "mode": "stream" if args.stream else "offline",
            "style": args.style, "sampler": model.sampler.name, "steps": model.steps,
            "window": ({"hop_ms": args.hop_ms, "lookahead_ms": args.lookahead_ms, "context_ms": args.context_ms}
                       if args.stream else None),
            "pad_s": args.pad_s, "seed": args.seed,
            "criteria": {"moves_min_rad": MOVES_MIN_RAD, "closes_ratio": CLOSES_RATIO,
                         "over_closed_rad": OVER_CLOSED_RAD},
            "summary": summary, "results": results, "definitions": DEFINITIONS}
