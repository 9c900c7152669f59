"""SynthTalk: a synthetic speech-to-FLAME world in the HDTF_TFHP dataset format.

espeak-ng speaks random English; an articulation model turns its phoneme timings into jaw,
expression and head motion at 25 fps; the audio is augmented like real recordings. See
docs/SYNTHTALK.md."""

from training.synth.world import WorldSummary, check_world_request, generate_world

__all__ = ["check_world_request", "generate_world", "WorldSummary"]
