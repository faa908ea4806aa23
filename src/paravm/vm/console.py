"""A domain's console stream: bytes from the guest, complete lines to a sink.

Guests write raw bytes (hypercall or the debug port); the console cuts them
into lines, decodes them leniently (invalid UTF-8 becomes U+FFFD), and hands
each line to the sink with the domain's name.  A partial last line is
delivered when the domain stops.  ``captured`` keeps the raw bytes (the last
``CAPTURE_LIMIT``) for scripts and tests.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable

Sink = Callable[[str, str], None]
CAPTURE_LIMIT = 1 << 20
LINE_LIMIT = 4096   # a longer run of bytes without a newline is emitted as a line


def stdout_sink(name: str, line: str) -> None:
    """``name| line`` on stdout, flushed (the CLI's default)."""
    sys.stdout.write(f"{name}| {line}\n")
    sys.stdout.flush()


class Console:
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
            start = 0
            while True:
                nl = buf.find(b"\n", start)
                if nl < 0:
                    break
                self._emit(buf[start:nl])
                start = nl + 1
            del buf[:start]
            while len(buf) >= LINE_LIMIT:
                self._emit(buf[:LINE_LIMIT])
                del buf[:LINE_LIMIT]

    def _emit(self, raw) -> None:
        if self.sink is not None:
            self.sink(self.name, bytes(raw).decode("utf-8", "replace").rstrip("\r"))

    def flush(self) -> None:
        with self._lock:
            if self._partial:
                self._emit(self._partial)
                self._partial.clear()

    @property
    def text(self) -> str:
        return bytes(self.captured).decode("utf-8", "replace")
