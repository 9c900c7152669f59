"""Real human speech recordings (`dpt-live voices fetch`) for the real-voice check (voice-check).

The bundled models were trained on synthetic espeak-ng speech only; these recordings test them on
real voices. Only package registries are reachable from where this runs, so the recordings come
from packages that ship speech: Debian packages (``apt-get download``, unpacked with ``dpkg-deb``)
and Python source distributions (``pip download``, checked against the sha256 pinned here), both
through the machine's own package clients so that their configured mirrors and proxies apply. Each
kept recording is converted to 16 kHz mono 16-bit WAV and listed in manifest.json with where it
came from and the licence the package states. Nothing fetched belongs in the repository: the
default folder is the cache ($DPT_LIVE_CACHE/real-voices, else ~/.cache/dpt-live/real-voices)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError

MANIFEST = "manifest.json"


class SourceError(UserError):
    """One source could not be fetched or unpacked; the others still proceed."""


@dataclass(frozen=True)
class Source:
    """A package that ships real speech. ``select(root)`` picks the recordings (paths under the
    unpacked package ``root``); ``raw_rate`` is the rate of header-less .raw files (s16le mono)."""

    name: str
    registry: str  # "debian" or "pypi"
    package: str
    version: str | None  # PyPI: pinned; Debian: whatever apt offers (recorded from the .deb)
    license: str  # as the package states it, with the file that says so
    speaker: str
    language: str
    select: Callable[[Path], list[Path]]
    raw_rate: int = 16000
    sha256: str | None = None  # PyPI: of the pinned sdist
    # PyPI: pins for the sdist's build backend, which pip runs to read the package's metadata
    build_constraints: tuple[str, ...] = ()


def _duration(path: Path) -> float:
    import soundfile as sf

    return sf.info(str(path)).duration


def _longest(paths: list[Path], count: int, max_seconds: float) -> list[Path]:
    """The ``count`` longest recordings not over ``max_seconds`` (ties by name), sorted by name: a
    deterministic sample of whole sentences that keeps the check's run time bounded."""
    timed = sorted(((_duration(p), p) for p in paths), key=lambda dp: (-dp[0], str(dp[1])))
    return sorted([p for d, p in timed if d <= max_seconds][:count])


def _alsa(root: Path) -> list[Path]:
    # channel-name announcements; Noise.wav is pink noise, not a voice
    return sorted(p for p in (root / "usr/share/sounds/alsa").glob("*.wav") if p.name != "Noise.wav")


def _asterisk_en(root: Path) -> list[Path]:
    # top level only: the subfolders hold copies under the same names
    return _longest(list((root / "usr/share/asterisk/sounds/en_US_f_Allison").glob("*.wav")), 20, 12.0)


def _asterisk_fr(root: Path) -> list[Path]:
    return _longest(list((root / "usr/share/asterisk/sounds/fr").glob("*.gsm")), 10, 12.0)


def _pysptk(root: Path) -> list[Path]:
    return [root / "pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav"]


def _pocketsphinx(root: Path) -> list[Path]:
    data = root / "pocketsphinx-5.0.4/test/data"
    # LibriVox readings and the read test utterances; the other test audio is silence, VAD
    # fixtures or multi-channel copies of these
    return sorted(data.glob("librivox/*.wav")) + [data / n for n in ("goforward.raw", "numbers.raw", "something.raw")]


SOURCES = [
    Source("alsa-utils", "debian", "alsa-utils", None,
           "GPL-2 (debian/copyright, 'Files: *')", "unnamed male voice (not stated by the package)",
           "en", _alsa),
    Source("pysptk", "pypi", "pysptk", "1.0.1",
           "MIT (LICENSE.md); the recording: CMU ARCTIC, 'free for use for any purpose' "
           "(pysptk/example_audio_data/COPYING, (c) 2003 Carnegie Mellon University)",
           "CMU ARCTIC speaker (not named by the package)", "en-US", _pysptk,
           sha256="78b1c9338bf795a41cdc3ff03fcd4699c401c323f54630bb71a19710078d0b3f"),
    Source("pocketsphinx", "pypi", "pocketsphinx", "5.0.4",
           "BSD-2-Clause, Carnegie Mellon University (LICENSE); test/data/librivox: LibriVox "
           "recordings (public domain)", "LibriVox reader (Sense and Sensibility ch. 1); CMU test speakers",
           "en-US", _pocketsphinx, sha256="17d2971e998490def9554b6ba41886708422af5b4ae888723b1b077aab0fe8d4",
           build_constraints=("scikit-build-core<0.10",)),  # later versions refuse its pyproject settings
    Source("asterisk-core-sounds-en-wav", "debian", "asterisk-core-sounds-en-wav", None,
           "CC-BY-SA-3.0 (debian/copyright: recorded by Allison Smith)", "Allison Smith (female)",
           "en-US", _asterisk_en),
    Source("asterisk-prompt-fr-armelle", "debian", "asterisk-prompt-fr-armelle", None,
           "BSD-style, (C) 2006 Michel Gutierrez (debian/copyright)", "Armelle Desjardins (female)",
           "fr", _asterisk_fr),
]
SOURCE_NAMES = [s.name for s in SOURCES]


def default_voices_dir() -> Path:
    from engines.artefacts import cache_root

    return cache_root() / "real-voices"


# --- download and unpack ---------------------------------------------------------------------------

def _run(cmd: list[str], cwd: Path, what: str, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                              env=None if env is None else {**os.environ, **env})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"{what}: {' '.join(cmd)} failed: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SourceError(f"{what}: {' '.join(cmd)} exited {done.returncode}: {' | '.join(tail)}")
    return done.stdout


def fetch_debian(source: Source, work: Path) -> tuple[Path, str]:
    """apt-get download + dpkg-deb -x -> (unpacked root, package version)."""
    what = f"Debian package {source.package}"
    _run(["apt-get", "download", source.package], work, what)
    debs = sorted(work.glob(f"{source.package}_*.deb"))
    if not debs:
        raise SourceError(f"{what}: apt-get download left no .deb in {work}")
    version = _run(["dpkg-deb", "-f", str(debs[-1]), "Version"], work, what).strip()
    root = work / "root"
    _run(["dpkg-deb", "-x", str(debs[-1]), str(root)], work, what)
    return root, version


def fetch_pypi(source: Source, work: Path) -> tuple[Path, str]:
    """The sdist of the pinned version through this interpreter's pip (``pip download --no-deps
    --no-binary NAME``: the package index, mirrors and proxies pip is configured with), checked
    against the pinned sha256, unpacked -> (root, version)."""
    what = f"PyPI sdist {source.package}=={source.version}"
    download = work / "download"
    download.mkdir()
    env = None
    if source.build_constraints:
        pins = work / "build-constraints.txt"
        pins.write_text("\n".join(source.build_constraints) + "\n")
        env = {"PIP_BUILD_CONSTRAINT": str(pins)}
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", source.package,
          "-d", str(download), f"{source.package}=={source.version}"], work, what, env)
    sdists = sorted(download.iterdir())
    if len(sdists) != 1 or not sdists[0].name.endswith(".tar.gz"):
        raise SourceError(f"{what}: pip download left {[p.name for p in sdists]}, not one .tar.gz sdist")
    target = sdists[0]
    got = hashlib.sha256(target.read_bytes()).hexdigest()
    if source.sha256 and got != source.sha256:
        raise SourceError(f"{what}: sha256 {got} of {target.name} does not match the pinned {source.sha256}")
    root = work / "root"
    try:
        with tarfile.open(target) as tar:
            tar.extractall(root, filter="data")  # "data": no links out, no absolute paths
    except (tarfile.TarError, OSError) as exc:
        raise SourceError(f"{what}: cannot unpack {target.name}: {exc}") from exc
    return root, source.version


# --- conversion and manifest ------------------------------------------------------------------------

def read_recording(path: Path, raw_rate: int = 16000) -> np.ndarray:
    """A recording as 16 kHz mono float32: anything libsndfile reads (WAV, header-less GSM 6.10
    .gsm) through load_audio; .raw as s16le mono at ``raw_rate``."""
    from diffposetalk.audio_io import load_audio, resample

    if path.suffix != ".raw":
        return load_audio(path)
    import soundfile as sf

    try:
        audio, _ = sf.read(str(path), format="RAW", samplerate=raw_rate, channels=1, subtype="PCM_16",
                           endian="LITTLE", dtype="float32")
    except Exception as exc:
        raise UserError(f"cannot read raw audio {path}: {exc}") from exc
    if audio.size == 0:
        raise UserError(f"audio file {path} is empty (0 samples)")
    return resample(audio, raw_rate)


def convert_source(source: Source, root: Path, version: str, out: Path) -> list[dict]:
    """Convert the source's recordings under ``root`` into ``out`` -> manifest entries."""
    import soundfile as sf

    from diffposetalk.units import SAMPLE_RATE

    picked = source.select(root)
    missing = [p for p in picked if not p.is_file()]
    if missing or not picked:
        raise SourceError(f"{source.registry} package {source.package} {version}: expected recordings not found: "
                          f"{', '.join(str(p.relative_to(root)) for p in missing) or 'none selected'}")
    entries = []
    for path in picked:
        rel = path.relative_to(root).as_posix()
        audio = read_recording(path, source.raw_rate)
        # file names: source + the original's name, so two packages' "intro" never collide
        name = f"{source.name}__{path.stem}.wav"
        if any(e["file"] == name for e in entries):
            raise SourceError(f"{source.package}: two recordings would both be written as {name}")
        sf.write(str(out / name), np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
        entries.append({"file": name, "source": source.name, "registry": source.registry,
                        "package": source.package, "version": version, "original_path": rel,
                        "license": source.license, "speaker": source.speaker, "language": source.language,
                        "seconds": round(len(audio) / SAMPLE_RATE, 3)})
    return entries


def fetch(out: Path, names: list[str] | None = None, log=print) -> dict:
    """Fetch every source (or ``names``) into ``out``; a failing source is reported in the
    manifest's "failed" list and the others proceed. Returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    old = out / MANIFEST
    if old.is_file():  # recordings of the previous fetch go, so the folder matches the manifest
        for e in json.loads(old.read_text()).get("recordings", []):
            (out / Path(e["file"]).name).unlink(missing_ok=True)
    recordings, failed = [], []
    for source in SOURCES:
        if names and source.name not in names:
            continue
        with tempfile.TemporaryDirectory(prefix=f"dpt-voices-{source.name}-") as tmp:
            try:
                fetcher = fetch_debian if source.registry == "debian" else fetch_pypi
                root, version = fetcher(source, Path(tmp))
                entries = convert_source(source, root, version, out)
            except UserError as exc:
                failed.append({"source": source.name, "error": str(exc)})
                log(f"voices fetch: {source.name}: FAILED: {exc}")
                continue
        recordings += entries
        log(f"voices fetch: {source.name} {version}: {len(entries)} recordings, "
            f"{sum(e['seconds'] for e in entries):.1f} s")
    manifest = {"description": "real human speech from package registries, 16 kHz mono PCM_16 WAV "
                               "(dpt-live voices fetch)", "recordings": recordings, "failed": failed}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
