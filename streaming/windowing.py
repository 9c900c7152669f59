"""Windowing arithmetic: which audio samples and which motion frames each streaming step uses.

All three knobs are in milliseconds and must be whole 40 ms motion frames (25 fps at 16 kHz:
640 samples per frame), so every step's audio window has the SAME length,
context + hop + lookahead, and the audio encoder always sees one fixed input shape (what an
ONNX/TensorRT engine built for that shape needs).

Step k emits frames [k*hop, (k+1)*hop). Its audio window ends ``lookahead`` frames after the last
emitted frame and starts ``context`` frames before the first one:

    |<- context ->|<-- hop (emitted) -->|<- lookahead (regenerated next step) ->|

With ``regen`` (0 by default) the denoiser window also starts ``regen`` frames before the first
emitted frame: frames already emitted are generated again (and discarded), continuing from the
frames before them. A 40 ms hop then keeps the layout a student distilled on 80 ms hops knows
(two real frames before the lookahead), at the latency of the 40 ms hop.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffposetalk.errors import UserError
from diffposetalk.units import FPS, FRAME_SAMPLES

FRAME_MS = 1000 // FPS  # 40


def ms_to_frames(ms: int, what: str) -> int:
    if ms < 0 or ms % FRAME_MS:
        raise UserError(f"{what} must be a non-negative multiple of {FRAME_MS} ms (one motion frame), got {ms}")
    return ms // FRAME_MS


@dataclass(frozen=True)
class WindowSpec:
    hop: int  # frames emitted per step
    lookahead: int  # future frames generated for the newest emitted frame, then discarded
    context: int  # past frames the audio encoder sees before the first emitted frame
    regen: int = 0  # emitted frames each denoiser window generates again before the new ones

    @classmethod
    def from_ms(cls, hop_ms: int, lookahead_ms: int, context_ms: int, regen_ms: int = 0) -> WindowSpec:
        spec = cls(ms_to_frames(hop_ms, "hop"), ms_to_frames(lookahead_ms, "lookahead"),
                   ms_to_frames(context_ms, "left context"), ms_to_frames(regen_ms, "regen"))
        if spec.hop < 1:
            raise UserError("hop must be at least one frame (40 ms)")
        if spec.regen > spec.context:
            raise UserError(f"regen {regen_ms} ms needs at least as much left context (got {context_ms} ms)")
        return spec

    def check_model(self, n_motions: int) -> None:
        """regen + hop + lookahead frames must fit the denoiser's window (the rest is padding)."""
        if self.denoised_frames > n_motions:
            what = "regen + hop + lookahead" if self.regen else "hop + lookahead"
            raise UserError(f"{what} = {self.denoised_frames * FRAME_MS} ms exceeds the model's window "
                            f"of {n_motions * FRAME_MS} ms")

    @property
    def denoised_frames(self) -> int:
        """Frames with real audio in each denoiser window: regenerated + emitted + lookahead."""
        return self.regen + self.hop + self.lookahead

    @property
    def new_frames(self) -> int:
        """Frames each step generates that were not emitted yet: emitted + lookahead."""
        return self.hop + self.lookahead

    @property
    def window_frames(self) -> int:
        return self.context + self.hop + self.lookahead

    @property
    def window_samples(self) -> int:
        return self.window_frames * FRAME_SAMPLES

    def first_frame(self, step: int) -> int:
        return step * self.hop

    def audio_end(self, step: int) -> int:
        """Sample index one past the last sample step ``step`` needs."""
        return ((step + 1) * self.hop + self.lookahead) * FRAME_SAMPLES

    def audio_start(self, step: int) -> int:
        """First sample of step ``step``'s window (negative at the start of a stream)."""
        return self.audio_end(step) - self.window_samples

    def steps_for(self, n_frames: int) -> int:
        """Steps needed to emit ``n_frames`` frames."""
        return -(-n_frames // self.hop)

    def describe(self) -> dict:
        out = {"hop_ms": self.hop * FRAME_MS, "lookahead_ms": self.lookahead * FRAME_MS,
               "context_ms": self.context * FRAME_MS, "window_ms": self.window_frames * FRAME_MS}
        if self.regen:
            out["regen_ms"] = self.regen * FRAME_MS
        return out


def default_regen_ms(hop_ms: int, regen_ms: int | None = None) -> int:
    """--regen-ms when not given: 40 at a 40 ms hop (regen + hop = the 80 ms a student's windows
    were distilled with), else 0."""
    return regen_ms if regen_ms is not None else (40 if hop_ms == 40 else 0)


def frames_in(n_samples: int) -> int:
    """Motion frames a stream of ``n_samples`` yields: whole 40 ms frames (as offline animate)."""
    return n_samples // FRAME_SAMPLES



def parse_windows(text: str, option: str, default_context_ms: int | None = None,
                  pairs_only: bool = False) -> list[tuple[int, int, int]]:
    """Command-line windows in ms, comma-separated: 'hop/lookahead/context' (``--grid``), also
    'hop/lookahead' with ``default_context_ms`` as the context (``--windows``), or with
    ``pairs_only`` 'hop/lookahead' only (``--configs``: the context is not the user's choice) ->
    [(hop_ms, lookahead_ms, context_ms)], each checked as a WindowSpec. ``option`` names the
    option in errors."""
    if pairs_only and default_context_ms is None:
        raise ValueError("pairs_only needs default_context_ms")
    if pairs_only:
        lengths, form, example = (2,), "HOP/LOOKAHEAD", "80/80"
    elif default_context_ms is not None:
        lengths, form, example = (2, 3), "HOP/LOOKAHEAD[/CONTEXT]", "80/80"
    else:
        lengths, form, example = (3,), "HOP/LOOKAHEAD/CONTEXT", "80/80/1600"
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        parts = [x.strip() for x in item.split("/")]
        if len(parts) not in lengths or not all(x.isdigit() for x in parts):
            raise UserError(f"{option}: {item!r} is not {form} in ms (e.g. {example})")
        hop, lookahead = int(parts[0]), int(parts[1])
        context = int(parts[2]) if len(parts) == 3 else default_context_ms
        WindowSpec.from_ms(hop, lookahead, context)  # names the problem (multiple of 40 ms, hop >= 40)
        out.append((hop, lookahead, context))
    if not out:
        raise UserError(f"{option}: give at least one window, e.g. {example}")
    return out
