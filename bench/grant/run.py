#!/usr/bin/env python3
"""Grants: host gntdev map latency, grant copy, vchan guest -> host; each against its baseline.

One guest (guest.c) grants 64 pages of its RAM to the host (``share 64``) and
idles; the host then measures, alternating paravm and baseline in every
round (median of per-round ratios):

1. **map + mmap + unmap**, 1 and 64 pages, through :class:`Gntdev`:
   ``map_grant_refs`` -> ``mmap(writable)`` -> read one byte of each page ->
   ``munmap`` -> ``unmap_grant_ref`` (pins, GTF bits, one MAP_FIXED per
   page and its undo).  Baseline: what a host process that simply held the
   guest's memfd would do for the same pages: ``mmap.mmap`` of the memfd at
   their offsets, read one byte of each, close.  (Xen's gntdev costs a
   hypercall and a TLB flush per batch; this compares against no checks.)
2. **grant copy** MB/s: ``Gntdev.grant_copy`` of 64 segments of 4 KiB from a
   host buffer into the 64 granted pages (256 KiB per call).  Baseline: a
   plain memcpy of the same bytes into the same pages (memoryview slice
   assignment over the guest's RAM mapping).
3. **vchan guest -> host** MB/s: a second guest (``vchan BYTES``) serves a
   vchan with 64 KiB rings and streams BYTES; the host is the client
   (:class:`paravm.services.vchan.Vchan`) reading with ``recv_into`` into one
   64 KiB buffer.  MB/s = the bytes after the first chunk / the host's time
   from its first chunk to its last.  Baseline: the same bytes through an
   ``os.pipe`` from one host process to another (64 KiB writes,
   ``readinto`` of 64 KiB in the reader), timed the same way, by the reader.

No goals (issue 5 sets none).  Writes bench/results/grant.json.

    .venv/bin/python bench/grant/run.py [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import mmap
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

NAME = "grant"
GUEST = HERE / "guest.elf"
PAGES = 64
MB = 1e6


def manifest(paravm_config, domains) -> object:
    text = ""
    for name, args in domains:
        quoted = ", ".join(f'"{a}"' for a in args)
        text += (f'[[domain]]\nname = "{name}"\nimage = "{GUEST}"\nmemory = 16\n'
                 f"args = [{quoted}]\nxen = {{}}\n\n")
    return paravm_config.parse_manifest(text, HERE / "bench.toml")


def wait_text(dom, pattern: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (m := re.search(pattern, dom.console.text)):
        if dom.stopped or time.monotonic() > deadline:
            sys.exit(f"bench/grant: guest {dom.name} did not print {pattern!r}:\n"
                     + dom.console.text[-2000:])
        time.sleep(0.002)
    return m


# --- part 1 and 2 ------------------------------------------------------------------------------
def map_cycle(Gntdev, svc, refs: list[int], iters: int) -> float:
    """us per map + mmap + touch + munmap + unmap of len(refs) pages."""
    dev = Gntdev(svc)
    pairs = [(1, r) for r in refs]
    t0 = time.perf_counter_ns()
    for _ in range(iters):
        index = dev.map_grant_refs(pairs)
        view = dev.mmap(index, len(pairs), writable=True)
        for off in range(0, len(view), 4096):
            view[off]
        dev.munmap(view)
        dev.unmap_grant_ref(index, len(pairs))
    t = (time.perf_counter_ns() - t0) / iters / 1e3
    dev.close()
    return t


def mmap_cycle(fd: int, offsets: list[int], iters: int) -> float:
    """us per mmap of the same pages straight from the memfd (contiguous
    pages in one mapping, as they are here), touch, close."""
    start, length = offsets[0], len(offsets) * 4096
    t0 = time.perf_counter_ns()
    for _ in range(iters):
        m = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                      offset=start)
        for off in range(0, length, 4096):
            m[off]
        m.close()
    return (time.perf_counter_ns() - t0) / iters / 1e3


def copy_mb_s(dev, CopySegment, Local, Foreign, refs, src, iters: int) -> float:
    segs = [CopySegment(Local(src, i * 4096), Foreign(1, r, 0), 4096)
            for i, r in enumerate(refs)]
    t0 = time.perf_counter_ns()
    for _ in range(iters):
        st = dev.grant_copy(segs)
    dt = time.perf_counter_ns() - t0
    if any(st):
        sys.exit(f"bench/grant: grant_copy statuses {st}")
    return len(refs) * 4096 * iters / (dt / 1e9) / MB


def memcpy_mb_s(ram_view, offsets, src, iters: int) -> float:
    mv = memoryview(src)
    t0 = time.perf_counter_ns()
    for _ in range(iters):
        for i, off in enumerate(offsets):
            ram_view[off:off + 4096] = mv[i * 4096:(i + 1) * 4096]
    dt = time.perf_counter_ns() - t0
    return len(offsets) * 4096 * iters / (dt / 1e9) / MB


# --- part 3 ---------------------------------------------------------------------------------------
def vchan_mb_s(paravm, config, Vchan, total: int) -> float:
    m = manifest(config, [("streamer", ["vchan", str(total)])])
    with paravm.Hypervisor(output=None) as hv:
        (g,) = hv.create_from_manifest(m)
        hv.start_all()
        buf = bytearray(65536)
        mv = memoryview(buf)
        got = 0
        with Vchan.client(hv, 1, "/local/domain/1/data/vchan", timeout=30) as v:
            first = n = v.recv_into(mv)
            t0 = time.perf_counter_ns()
            got += n
            while got < total:
                n = v.recv_into(mv[:min(65536, total - got)])
                if not n:
                    sys.exit("bench/grant: the vchan guest went away early")
                got += n
            dt = time.perf_counter_ns() - t0
        r = g.wait(60)
        if r is None or r.how != "exited" or r.status:
            sys.exit("bench/grant: vchan guest failed:\n" + g.console.text[-2000:])
    return (total - first) / (dt / 1e9) / MB


def pipe_mb_s(total: int) -> float:
    r, w = os.pipe()
    reader = subprocess.Popen([sys.executable, "-c", _PIPE_READER, str(r), str(total)],
                              pass_fds=(r,), stdout=subprocess.PIPE, text=True)
    os.close(r)
    chunk = bytes(65536)
    sent = 0
    while sent < total:
        sent += os.write(w, chunk[:min(65536, total - sent)])
    os.close(w)
    out, _ = reader.communicate(timeout=120)
    t0, first, t_end, got = map(int, out.split())
    if got != total:
        sys.exit(f"bench/grant: the pipe reader got {got} of {total} bytes")
    # Timed as the vchan is: from the first chunk received to the last (the
    # reader's interpreter start-up is outside), without the first chunk.
    return (total - first) / ((t_end - t0) / 1e9) / MB


_PIPE_READER = r"""
import os, sys, time
fd, total = int(sys.argv[1]), int(sys.argv[2])
buf = bytearray(65536); mv = memoryview(buf); got = 0
f = os.fdopen(fd, "rb", buffering=0)
first = got = f.readinto(mv)
t0 = time.perf_counter_ns()
while got < total:
    n = f.readinto(mv)
    if not n:
        break
    got += n
print(t0, first, time.perf_counter_ns(), got)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--check", action="store_true", help="accepted for bench/run; no goals")
    args = ap.parse_args()
    rounds = 2 if args.quick else args.rounds
    iters = {1: 100 if args.quick else 400, PAGES: 20 if args.quick else 80}
    copy_iters = 50 if args.quick else 200
    stream = (16 if args.quick else 64) << 20
    common.make(HERE)
    paravm = common.import_paravm()
    from paravm import config
    from paravm.services.grant.gntdev import CopySegment, Foreign, Gntdev, Local
    from paravm.services.vchan import Vchan

    lat = {n: {"paravm": [], "mmap": []} for n in iters}
    copy = {"grant_copy": [], "memcpy": []}
    with paravm.Hypervisor(output=None) as hv:
        (g,) = hv.create_from_manifest(manifest(config, [("sharer", ["share", str(PAGES)])]))
        hv.start_all()
        found = wait_text(g, r"RESULT refs=(\d+) count=(\d+)")
        first = int(found.group(1))
        refs = list(range(first, first + PAGES))
        table = hv.grant.table_of("sharer")
        gfns = [table.entry(r)[2] for r in refs]
        offsets = [gfn * 4096 for gfn in gfns]
        if offsets != list(range(offsets[0], offsets[0] + PAGES * 4096, 4096)):
            sys.exit("bench/grant: the guest's shared pages are not contiguous")
        src = os.urandom(PAGES * 4096)
        dev = Gntdev(hv.grant)
        for rnd in range(rounds):
            for n in (1, PAGES) if rnd % 2 == 0 else (PAGES, 1):
                if rnd % 2 == 0:
                    a = map_cycle(Gntdev, hv.grant, refs[:n], iters[n])
                    b = mmap_cycle(g.ram.fd, offsets[:n], iters[n])
                else:
                    b = mmap_cycle(g.ram.fd, offsets[:n], iters[n])
                    a = map_cycle(Gntdev, hv.grant, refs[:n], iters[n])
                lat[n]["paravm"].append(a)
                lat[n]["mmap"].append(b)
            pair = [("grant_copy", lambda: copy_mb_s(dev, CopySegment, Local, Foreign, refs,
                                                     src, copy_iters)),
                    ("memcpy", lambda: memcpy_mb_s(g.ram.buffer, offsets, src, copy_iters))]
            for key, fn in (pair if rnd % 2 == 0 else pair[::-1]):
                copy[key].append(fn())
        # the copies landed: the guest's pages hold the source bytes
        if g.ram.buffer[offsets[0]:offsets[0] + 4096] != src[:4096]:
            sys.exit("bench/grant: grant_copy did not write the guest's page")
        dev.close()
        g.stop()

    vch = {"vchan": [], "os.pipe": []}
    for rnd in range(rounds):
        pair = [("vchan", lambda: vchan_mb_s(paravm, config, Vchan, stream)),
                ("os.pipe", lambda: pipe_mb_s(stream))]
        for key, fn in (pair if rnd % 2 == 0 else pair[::-1]):
            vch[key].append(fn())

    def ratios(a, b):
        return statistics.median(x / y for x, y in zip(a, b))

    data = {
        "machine": common.machine_info(),
        "rounds": rounds,
        "map_latency_us": {str(n): {k: common.summary(v) for k, v in d.items()}
                           | {"ratio": {"paravm/mmap": ratios(d["paravm"], d["mmap"])}}
                           for n, d in lat.items()},
        "grant_copy_mb_per_s": {k: common.summary(v) for k, v in copy.items()}
        | {"ratio": {"grant_copy/memcpy": ratios(copy["grant_copy"], copy["memcpy"])}},
        "vchan_mb_per_s": {k: common.summary(v) for k, v in vch.items()}
        | {"ratio": {"vchan/os.pipe": ratios(vch["vchan"], vch["os.pipe"])},
           "bytes": stream},
    }
    path = common.write_results(NAME, data)
    rows = []
    for n in iters:
        d = data["map_latency_us"][str(n)]
        rows.append([f"map+mmap+unmap, {n} page{'s' if n > 1 else ''}",
                     f"{d['paravm']['median']:.1f} us", f"{d['mmap']['median']:.1f} us (mmap)",
                     f"{d['ratio']['paravm/mmap']:.2f}x"])
    c = data["grant_copy_mb_per_s"]
    rows.append(["grant_copy 64 x 4 KiB", f"{c['grant_copy']['median']:.0f} MB/s",
                 f"{c['memcpy']['median']:.0f} MB/s (memcpy)",
                 f"{c['ratio']['grant_copy/memcpy']:.3f}x"])
    v = data["vchan_mb_per_s"]
    rows.append([f"vchan guest -> host, {stream >> 20} MiB", f"{v['vchan']['median']:.0f} MB/s",
                 f"{v['os.pipe']['median']:.0f} MB/s (os.pipe)",
                 f"{v['ratio']['vchan/os.pipe']:.3f}x"])
    print(common.table(["what", "paravm", "baseline", "ratio"], rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
