"""`dpt-live vmc-check`: what a VTuber app would receive, measured by an independent OSC receiver.

Runs the VMC bridge against a live server for a while (with a pause and resume in the middle, so
the server restarts its generator and sends a reset frame), receives every bundle on a python-osc
UDP server of its own and reports the figures docs/CLIENTS.md quotes: names carried, the mouth at
rest, blink peaks, which vowel is strongest how often, the head's rotation and its largest jump
between bundles (overall and around resets)."""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np

VRM0 = ("A", "I", "U", "E", "O", "Blink", "Blink_L", "Blink_R")
VRM1 = ("aa", "ih", "ou", "ee", "oh", "blink", "blinkLeft", "blinkRight")
VOWELS = ("A", "I", "U", "E", "O")


class OscLog:
    """A python-osc UDP server on a free port keeping (receive time, blendshapes, bones) per bundle."""

    def __init__(self, host: str = "127.0.0.1"):
        from pythonosc.dispatcher import Dispatcher
        from pythonosc.osc_packet import OscPacket
        from pythonosc.osc_server import BlockingOSCUDPServer

        self.bundles: list[tuple[float, dict, dict]] = []
        self.lock = threading.Lock()
        log = self

        class Keep(Dispatcher):
            def call_handlers_for_packet(self, data, client_address):
                blends, bones = {}, {}
                for m in OscPacket(data).messages:
                    addr, params = m.message.address, m.message.params
                    if addr == "/VMC/Ext/Blend/Val":
                        blends[params[0]] = float(params[1])
                    elif addr == "/VMC/Ext/Bone/Pos":
                        bones[params[0]] = (tuple(params[1:4]), tuple(params[4:8]))
                with log.lock:
                    log.bundles.append((time.monotonic(), blends, bones))
                return []

        # one thread, packets in arrival order: a thread per packet can reorder bundles under load
        # (a false head jump) and adds its start-up to every arrival time
        self.server = BlockingOSCUDPServer((host, 0), Keep())
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _angle_deg(q) -> float:
    w = min(1.0, abs(float(q[3])))
    return math.degrees(2 * math.acos(w))


def _qmul(a, b):
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz)


def _between_deg(q0, q1) -> float:
    d = abs(float(np.dot(q0, q1)) / (np.linalg.norm(q0) * np.linalg.norm(q1)))
    return math.degrees(2 * math.acos(min(1.0, d)))


def figures(bundles: list[tuple[float, dict, dict]], reset_times: list[float], open_threshold: float = 0.1) -> dict:
    """The figures of docs/CLIENTS.md from received bundles (time, blends, bones)."""
    names = set().union(*(b for _, b, _ in bundles)) if bundles else set()
    out: dict = {"bundles": len(bundles), "vrm0_names": all(n in names for n in VRM0),
                 "vrm1_names": all(n in names for n in VRM1), "names": sorted(names)}
    if not bundles:
        return out

    def series(name):
        return np.array([b.get(name, np.nan) for _, b, _ in bundles])

    if "jawOpen" in names:
        jaw = series("jawOpen")
        rest = jaw < 0.05
        smile = np.maximum(series("mouthSmileLeft"), series("mouthSmileRight"))
        out["arkit_rest_frames"] = int(rest.sum())
        out["arkit_rest_smile_median"] = round(float(np.nanmedian(smile[rest])), 3) if rest.any() else None
        out["arkit_rest_mouthClose_median"] = round(float(np.nanmedian(series("mouthClose")[rest])), 3) if rest.any() else None
        out["mouthClose_over_jawOpen_max"] = round(float(np.nanmax(series("mouthClose") - jaw)), 3)
    for name in ("Blink", "Blink_L", "Blink_R", "blink", "blinkLeft", "blinkRight", "eyeBlinkLeft", "eyeBlinkRight"):
        if name in names:
            out[f"{name}_max"] = round(float(np.nanmax(series(name))), 3)
    vis = np.column_stack([series(v) for v in VOWELS])
    opened = np.nanmax(vis, axis=1) > open_threshold
    out["open_bundles"] = int(opened.sum())
    if opened.any():
        strongest = np.nanargmax(vis[opened], axis=1)
        out["vowel_strongest_share"] = {v: round(float(np.mean(strongest == k)), 3) for k, v in enumerate(VOWELS)}
        out["vowels_over_5pct"] = int(sum(np.mean(strongest == k) >= 0.05 for k in range(len(VOWELS))))
    heads = [bn.get("Head") for _, _, bn in bundles]
    necks = [bn.get("Neck") for _, _, bn in bundles]
    if all(h is not None for h in heads):
        hq = np.array([h[1] for h in heads])
        ang = np.array([_angle_deg(q) for q in hq])
        out["head_bone_deg_median"] = round(float(np.median(ang)), 2)
        out["head_bone_deg_std"] = round(float(np.std(ang)), 2)
        if all(n is not None for n in necks):
            total = [_qmul(n[1], h[1]) for n, h in zip(necks, heads)]
            tang = np.array([_angle_deg(q) for q in total])
            out["neck_head_deg_median"] = round(float(np.median(tang)), 2)
            out["neck_head_deg_std"] = round(float(np.std(tang)), 2)
            steps = np.array([_between_deg(total[i - 1], total[i]) for i in range(1, len(total))])
        else:
            steps = np.array([_between_deg(hq[i - 1], hq[i]) for i in range(1, len(hq))])
        out["head_jump_deg_max"] = round(float(steps.max()), 2) if len(steps) else 0.0
        times = np.array([t for t, _, _ in bundles])[1:]
        near = np.zeros(len(steps), bool)
        for r in reset_times:  # the bundles within a second after a reset frame arrived
            near |= (times >= r) & (times <= r + 1.0)
        out["resets"] = len(reset_times)
        out["head_jump_deg_max_at_reset"] = round(float(steps[near].max()), 2) if near.any() else None
    return out


def run_check(args) -> int:
    from clients.vmc import VmcBridge, bridge_mapping
    from clients.vmc_map import VmcMapper
    from clients.ws_client import ClientError, StreamClient, pause_control

    receiver = OscLog()
    client = StreamClient(args.url, token=args.token, session=args.session, retry_first=True)
    bridge = None
    reset_times: list[float] = []
    failure: list[BaseException] = []
    stop = threading.Event()
    ready = threading.Event()

    def reader():
        nonlocal bridge
        try:
            for f in client.frames(stop=stop):
                if bridge is None:
                    mapping = bridge_mapping(args, client.hello)
                    bridge = VmcBridge(("127.0.0.1", receiver.port), VmcMapper(mapping, arkit=True), rate=args.rate)
                    ready.set()
                now = time.monotonic()
                if f.reset:
                    reset_times.append(now)
                bridge.push(f.exp, f.pose, f.eyes, f.audio_time, now, f.reset)
                if stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - reported below
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        if not ready.wait(30) or bridge is None:
            raise ClientError(f"no frames from {args.url}: {failure[0] if failure else 'timeout'}")
        start = time.monotonic()
        period = 1.0 / args.rate
        paused = resumed = False
        while (now := time.monotonic()) - start < args.seconds:
            t = now - start
            if args.pause_at and not paused and t >= args.pause_at:
                client.send(pause_control(True))
                paused = True
            if args.pause_at and paused and not resumed and t >= args.pause_at + args.pause_s:
                client.send(pause_control(False))
                resumed = True
            bridge.tick(now)
            time.sleep(max(0.0, period - (time.monotonic() - now)))
    finally:
        stop.set()
        client.close()
        thread.join(timeout=2)
        time.sleep(0.1)
        receiver.close()
    result = figures(receiver.bundles, reset_times)
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0
