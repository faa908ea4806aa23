"""An on-disk cache of checked ELF facts, keyed by the image file's SHA-256.

Importing pyelftools and parsing an image costs ~39-56 ms here (bench/startup,
cache on vs off), a third of
``paravm run``'s start-up, for facts that only change when the file does.
The cache keeps :class:`~.elf.ElfInfo` (entry point, loadable segments, the
stub's vector table) as JSON in ``$PARAVM_CACHE_DIR`` or
``$XDG_CACHE_HOME/paravm/images`` (default ``~/.cache/paravm/images``).
Keyed by content, an entry can never be stale; an unreadable, corrupt or
foreign entry is a miss, and a cache that cannot be written is skipped
(``PARAVM_CACHE_DIR=`` empty disables it).  Placement checks against the
domain (RAM size, vCPU stacks) run on every load.
"""

from __future__ import annotations

import hashlib
import json
import os

from .elf import ElfInfo

VERSION = 1


def _dir() -> str | None:
    d = os.environ.get("PARAVM_CACHE_DIR")
    if d is not None:
        return d or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "paravm", "images")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load(key: str) -> ElfInfo | None:
    d = _dir()
    if d is None:
        return None
    try:
        with open(os.path.join(d, key + ".json"), "rb") as f:
            raw = json.loads(f.read(1 << 20))
        if raw.get("version") != VERSION or raw.get("sha256") != key:
            return None
        segs = tuple((int(i), int(g), int(o), int(fs), int(ms), bool(x))
                     for i, g, o, fs, ms, x in raw["segments"])
        vectors = raw["vectors"]
        info = ElfInfo(int(raw["entry"]), segs, None if vectors is None else int(vectors))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return info     # read_image checks it with elf.consistent() before use


def store(key: str, info: ElfInfo) -> None:
    d = _dir()
    if d is None:
        return
    body = json.dumps({"version": VERSION, "sha256": key, "entry": info.entry,
                       "segments": [list(s) for s in info.segments],
                       "vectors": info.vectors})
    tmp = os.path.join(d, f".{key}.{os.getpid()}.tmp")
    try:
        os.makedirs(d, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(body)
        os.replace(tmp, os.path.join(d, key + ".json"))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
