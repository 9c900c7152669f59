"""The server's settings (a light module: `dpt-live serve --help` reads its defaults without
importing torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diffposetalk.units import FPS

WEB_ROOT = Path(__file__).resolve().parent.parent / "clients" / "web"
# npm packages of the VRM viewer (package.json at the repository root, `make run` installs them),
# served read-only under /vendor/<name>/ for the viewer's import map; nothing else of node_modules.
NODE_MODULES = WEB_ROOT.parent.parent / "node_modules"
VENDOR_PACKAGES = {"three": "three", "three-vrm": "@pixiv/three-vrm"}


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port (tests); LiveServer.port holds the bound one
    token: str | None = None  # None: no token needed (--no-token)
    allow_origins: list[str] = field(default_factory=list)  # in addition to the server's own origins
    max_message: int = 1 << 20
    max_sessions: int = 32
    max_viewers: int = 64
    viewer_queue: int = FPS  # frames (1 s) a viewer may fall behind before its oldest are dropped
    session_idle: float = 60.0  # s without viewers and audio before an on-demand session closes
    upstream_idle: float = 10.0  # s without upstream PCM before audio_end is assumed
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    web_root: Path = WEB_ROOT
    flame_asset: bytes | None = None
    avatar_map: dict | None = None  # the model's avatar_map.json, sent in the hello
    avatar_vrm: bytes | None = None  # serve --avatar FILE.vrm, served at /avatar.vrm
    node_modules: Path = NODE_MODULES
    # What a slow viewer may be behind (docs/SERVER.md, "Slow viewers"): a few frames in flight
    # (server/delivery.py), queued frames older than half of it dropped. None: no bound but the queue.
    lag_bound: float | None = 1.0
    stall_timeout: float = 5.0  # s frames may wait for a viewer that takes none before it is closed
    write_limit: int = 8 * 1024  # websockets' write buffer high-water mark per connection (30 binary frames)
    send_buffer: int | None = 16 * 1024  # SO_SNDBUF per WebSocket (Linux doubles it; None: the OS default, up to 4 MB)
    janitor_interval: float = 1.0
