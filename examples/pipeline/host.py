"""The pipeline's host side (domain 0): take the hasher's result through
gntdev and check it against hashlib over the same file.

``paravm run examples/pipeline/pipeline.toml --input FILE`` runs ``main``
once the guests have started (the manifest's ``[host] program``). It finds
the result page's grant reference and event channel in xenstore, binds the
channel, maps the page read-write through the gntdev API, shows progress
while the hasher streams, then prints the SHA-256 (lowercase hex), CRC-32,
byte count, MB/s and OK or MISMATCH. Exit status 0 only on a match.

The result page layout is pipeline.h's ``struct pipe_result``.
"""

from __future__ import annotations

import hashlib
import struct
import time
import zlib

from paravm.services.grant.gntdev import Gntdev

# struct pipe_result (pipeline.h)
RESULT = struct.Struct("<IIQQIi32sQ16s")
OFF_STATE, OFF_BYTES, OFF_HOST_DONE = 4, 8, 88
RESULT_MAGIC = 0x45504950
STREAMING, DONE, FAILED = 0, 1, 2
PIPE_EPROTO = -71
POLL_S = 0.1          # progress refresh while streaming
READ_CHUNK = 1 << 20  # hashlib reads the file this much at a time

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class _NoResult(Exception):
    """Why there is no result to check (printed after MISMATCH)."""


def _gone(run, hasher) -> str:
    """Why waiting for the hasher ended early."""
    if hasher.result is not None:
        return f"the hasher stopped before its result ({hasher.result.describe()})"
    return "interrupted: the run was stopped before the hasher's result"


def _xenstore(run, path: str) -> int:
    """The integer at *path*, waiting while the hasher runs."""
    hasher = run.domain("hasher")
    while not run.stopping.is_set() and hasher.result is None:
        try:
            raw = run.hv.xenstore.wait(path, POLL_S)
        except TimeoutError:
            continue
        try:
            return int(raw)
        except ValueError:
            raise _NoResult(f"{path} is not a number: {raw[:32]!r}") from None
    raise _NoResult(_gone(run, hasher))


def _expected(run) -> tuple[bytes, int, int]:
    """SHA-256, CRC-32 and size of the input file, read here."""
    sha, crc, n = hashlib.sha256(), 0, 0
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    try:
        with open(run.input, "rb", buffering=0) as f:
            while got := f.readinto(buf):
                if run.stopping.is_set():
                    raise _NoResult("interrupted while hashing the input file")
                sha.update(view[:got])
                crc = zlib.crc32(view[:got], crc)
                n += got
    except OSError as e:
        raise _NoResult(f"cannot read {run.input}: {e.strerror or e}") from None
    return sha.digest(), crc, n


def _take_result(run) -> tuple:
    """(the result fields as RESULT's tuple, seconds from the domains' start
    to the result, the file's (sha256, crc32, size)); raises _NoResult.

    The page stays mapped until the file has been hashed here too: the
    hasher waits while the host holds it, so a large file does not keep the
    run going after the guests have stopped."""
    hv, hasher = run.hv, run.domain("hasher")
    home = f"/local/domain/{hasher.domid}/data/pipeline"
    ref = _xenstore(run, f"{home}/result-ref")
    remote_port = _xenstore(run, f"{home}/event-channel")
    try:
        total = run.input.stat().st_size
    except OSError as e:
        raise _NoResult(f"cannot read {run.input}: {e.strerror or e}") from None
    with hv.evtchn.open() as ev, Gntdev(hv.grant) as dev:
        try:
            port = ev.bind_interdomain(hasher.domid, remote_port)
            index = dev.map_grant_refs([(hasher.domid, ref)])
            page = dev.mmap(index, 1, writable=True)
        except OSError as e:      # a hasher that published a bad ref or port
            raise _NoResult(f"cannot take the result page (grant {ref}, event channel "
                            f"{remote_port}): {e.strerror or e}") from None
        try:
            with run.progress(total) as progress:
                while _U32.unpack_from(page, OFF_STATE)[0] == STREAMING:
                    progress.update(_U64.unpack_from(page, OFF_BYTES)[0])
                    if run.stopping.is_set() or hasher.result is not None:
                        # one last look: it may have finished, then stopped
                        if _U32.unpack_from(page, OFF_STATE)[0] != STREAMING:
                            break
                        raise _NoResult(_gone(run, hasher))
                    if (p := ev.wait(POLL_S)) is not None:
                        ev.unmask(p)
            elapsed = time.monotonic() - run.started
            fields = RESULT.unpack_from(bytes(page[:RESULT.size]))   # copied once
            expected = _expected(run) if fields[1] == DONE else None
            _U32.pack_into(page, OFF_HOST_DONE, 1)
        finally:
            dev.munmap(page)
            dev.unmap_grant_ref(index, 1)
        ev.notify(port)                 # the hasher may revoke the grant now
    return fields, elapsed, expected


def main(run) -> int:
    if run.input is None:
        run.print("MISMATCH: no --input file to check against")
        return 1
    try:
        result, elapsed, expected = _take_result(run)
    except _NoResult as e:
        run.print(f"MISMATCH: {e}")
        return 1
    magic, state, nbytes, total, crc, error, digest, stream_ns, impl, *_ = result
    if magic != RESULT_MAGIC or state != DONE:
        why = "a stream error (EPROTO)" if error == PIPE_EPROTO else f"error {error}"
        run.print(f"MISMATCH: the hasher failed: {why}")
        return 1
    want_digest, want_crc, want_bytes = expected
    run.print(f"sha256 {digest.hex()}")
    run.print(f"crc32  {crc:08x}")
    run.print(f"bytes  {nbytes}")
    stream = f", hasher's stream {nbytes / stream_ns * 1e3:.1f} MB/s" if stream_ns else ""
    impl = impl.rstrip(b"\0").decode("ascii", "replace")
    run.print(f"MB/s   {nbytes / elapsed / 1e6:.1f} ({elapsed:.3f} s from the domains' start "
              f"to the result{stream}; SHA-256 {impl})")
    wrong = [f"{what}: guests {got}, hashlib {want}" for what, got, want in (
        ("sha256", digest.hex(), want_digest.hex()), ("crc32", f"{crc:08x}", f"{want_crc:08x}"),
        ("bytes", nbytes, want_bytes)) if got != want]
    if wrong:
        run.print("MISMATCH: " + "; ".join(wrong))
        return 1
    run.print("OK")
    return 0
