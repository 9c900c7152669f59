"""Where the bundled assets of a checkout live (the demo models, the demo speech)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
# the teacher (offline generation, evaluation) and the distilled student (stream, serve: one
# network pass per step, trained on streaming inputs; docs/DISTILL.md)
DEFAULT_MODEL = MODELS_DIR / "demo"
DEFAULT_STREAM_MODEL = MODELS_DIR / "demo-student"
DEMO_AUDIO = REPO_ROOT / "clients" / "demo" / "speech.flac"
