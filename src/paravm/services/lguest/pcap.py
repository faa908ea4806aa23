"""A pcap file of the Ethernet frames on a LAN (``paravm run --capture LAN=FILE``).

The classic libpcap format (microsecond timestamps, LINKTYPE_ETHERNET), which
tcpdump, tshark and Wireshark read.  Written here rather than with a library:
two fixed headers, and the writer is on the LAN's delivery path.
"""

from __future__ import annotations

import struct
import time

_GLOBAL = struct.Struct("<IHHiIII")      # magic, 2, 4, thiszone, sigfigs, snaplen, linktype
_RECORD = struct.Struct("<IIII")         # ts_sec, ts_usec, incl_len, orig_len
MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535


class PcapWriter:
    """Append frames to *path* (created or truncated); ``close()`` flushes."""

    def __init__(self, path) -> None:
        self.path = path
        self.frames = 0
        self._f = open(path, "wb")
        self._f.write(_GLOBAL.pack(MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))

    def write(self, frame: bytes, t: float | None = None) -> None:
        t = time.time() if t is None else t
        sec = int(t)
        self._f.write(_RECORD.pack(sec, int((t - sec) * 1e6), len(frame), len(frame)))
        self._f.write(frame)
        self.frames += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def read_pcap(path) -> list[bytes]:
    """The frames of a pcap file written by :class:`PcapWriter` (for tests and tools)."""
    with open(path, "rb") as f:
        data = f.read()
    magic, major, minor, _z, _s, _snap, link = _GLOBAL.unpack_from(data, 0)
    if magic != MAGIC or (major, minor) != (2, 4) or link != LINKTYPE_ETHERNET:
        raise ValueError(f"{path}: not an Ethernet pcap file")
    off, frames = _GLOBAL.size, []
    while off < len(data):
        _sec, _usec, incl, _orig = _RECORD.unpack_from(data, off)
        off += _RECORD.size
        frames.append(data[off:off + incl])
        off += incl
    return frames
