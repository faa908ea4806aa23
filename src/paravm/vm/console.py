"""A domain's console stream: bytes from the guest, complete lines to a sink.

Guests write raw bytes (hypercall or the debug port); the console cuts them
into lines, decodes them leniently (invalid UTF-8 becomes U+FFFD), escapes
control characters (a guest must not move the cursor, spoof another domain's
prefix with a carriage return, or send terminal escapes), and hands each line
to the sink with the domain's name.  A partial last line is delivered when the
domain stops.  A sink that fails with ``OSError`` (a closed pipe) is dropped;
the guest goes on.  ``captured`` keeps the raw bytes (the last
``CAPTURE_LIMIT``) for scripts and tests.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable

Sink = Callable[[str, str], None]
CAPTURE_LIMIT = 1 << 20
LINE_LIMIT = 4096   # a longer run of bytes without a newline is emitted as a line


# C0 and C1 controls but tab, and DEL, shown as \xNN.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if c != 0x09}


def sanitize(line: str) -> str:
    """*line* with control characters escaped (tab kept)."""
    return line.translate(_CONTROLS)


def stdout_sink(name: str, line: str) -> None:
    """``name| line`` on stdout, flushed (the CLI's default)."""
    sys.stdout.write(f"{name}| {line}\n")
    sys.stdout.flush()


class Console:
    """The console of domain *name*: :meth:`write` takes guest bytes (from any
    vCPU thread), complete lines go to ``sink(name, line)``."""

    def __init__(self, name: str, sink: Sink | None) -> None:
        self.name = name
        self.sink = sink
        self._partial = bytearray()
        self.captured = bytearray()
        self.bytes_written = 0
        self.first_output_ns: int | None = None
        self._lock = threading.Lock()

    def write(self, data: bytes, now_ns: int = 0) -> None:
        with self._lock:
            if self.first_output_ns is None and data:
                self.first_output_ns = now_ns
            self.bytes_written += len(data)
            self.captured += data
            if len(self.captured) > CAPTURE_LIMIT:
                del self.captured[:len(self.captured) - CAPTURE_LIMIT]
            buf = self._partial
            buf += data
            lines = []
            start = 0
            while True:
                nl = buf.find(b"\n", start)
                if nl < 0:
                    break
                lines.append(bytes(buf[start:nl]))
                start = nl + 1
            del buf[:start]
            while len(buf) >= LINE_LIMIT:
                lines.append(bytes(buf[:LINE_LIMIT]))
                del buf[:LINE_LIMIT]
            # The bytes left the buffer before any sink call: a failing sink
            # cannot make them come out twice.
            for raw in lines:
                self._emit(raw)

    def _emit(self, raw: bytes) -> None:
        if self.sink is None:
            return
        text = raw.decode("utf-8", "replace")
        if text.endswith("\r"):
            text = text[:-1]
        try:
            self.sink(self.name, sanitize(text))
        except OSError:
            self.sink = None       # e.g. stdout closed: keep capturing, stop printing

    def flush(self) -> None:
        """Deliver a partial last line (at stop)."""
        with self._lock:
            raw = bytes(self._partial)
            self._partial.clear()
            if raw:
                self._emit(raw)

    @property
    def text(self) -> str:
        return bytes(self.captured).decode("utf-8", "replace")
