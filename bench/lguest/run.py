#!/usr/bin/env python3
"""lguest I/O: block sequential reads vs Python reading the same file; guest -> guest net frames.

Two parts (guest.c is the guests' program; its header describes the loops):

1. **block sequential read** of an image file of ``--image-mib`` MiB of
   random bytes (made in a temporary directory) through the lguest block
   driver (``lguest_blk_read``), in 4 KiB and in 64 KiB requests, against
   Python on the host reading the same file in the same request sizes (the
   limit: what the launcher itself does per request, without the guest):

   * ``readinto``: ``os.preadv`` into one preallocated buffer (no allocation;
     the baseline of the ratio);
   * ``pread``: ``os.pread``, a new bytes object per request (what the
     launcher's block device does before copying into the guest).

   The page cache is warm for both (the file is read once first; each guest
   run reads its first 2 MiB untimed).  One guest run per round (a fresh
   domain with the image as a read-only disk) reads the whole image once per
   request size; the host reads it once per size and kind in the same round,
   before or after the guest (alternating); the size order rotates by round.
   MB/s = bytes / the guest's TSC time (1 MB = 10^6 bytes).  The ratio is
   the median of per-round ratios guest / readinto.  The guest checks
   nothing, but XORs the first 8 bytes of every request, compared here with
   the file's.

2. **net guest -> guest**: guests ``tx`` and ``rx`` on one LAN; ``tx`` sends
   N frames of 64 B and of 1500 B to ``rx``'s MAC with ``lguest_net_send``,
   resending (``lguest_net_resend``) while ``rx``'s 8 receive buffers are
   full; ``rx`` spins up to ``--spin`` pauses for a filled buffer, then
   ``lguest_net_recv`` copies the frame out (and sleeps when nothing came).
   frames/s = N / ``rx``'s time from a common start barrier to its last
   frame.  **Only as a reference** (not a baseline the issue asks for): the
   same two guests moving the same frames (same bytes, same copies in and
   out) over a Tegra IVC queue with the cookie API, of 8 frames (``ivc``:
   the same buffering as lguest's 8 receive buffers) and of 256 frames
   (``ivc256``: bench/ivc's geometry).  Variants and sizes alternate within
   each round, in rotating order.  ``ivc256`` swings about 3x from one run
   (or round) to the next here (64 B: ~1.8 vs ~5-6 M frames/s), with or
   without lguest traffic before it: the cache-line transfers between this
   VM's two CPUs, which the host moves around; compare ratios within a round.

Where the time goes: every guest also times ``--nops`` no-op hypercalls (the
bare exit round trip, in the same domain and run), and VMM exits per request
/ frame come from ``Domain.stats()`` snapshotted on the guests' ``MARK``
lines (minus an empty phase's).  A last, diagnostic run of each part has the
VMM's exit timing on (``Hypervisor(timing=True)``): the time the VMM spends
in the SEND_DMA handler per call (Python) against the no-op hypercall's.
The measured runs have it off.

No goals (issue 4 sets none); ``--check`` is accepted for bench/run and
only fails on errors, as without it.  Writes bench/results/lguest.json.

    .venv/bin/python bench/lguest/run.py [--rounds R] [--quick] [--image-mib M]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

NAME = "lguest"
GUEST = HERE / "guest.elf"
CHUNKS = (4096, 65536)
HOST_KINDS = ("readinto", "pread")
SIZES = (64, 1500)
VARIANTS = ("lguest", "ivc", "ivc256")
IVC_NFRAMES = {"ivc": 8, "ivc256": 256}
IVC_FRAME = {64: 64, 1500: 1536}               # IVC frame sizes are multiples of 64
# frames per phase (full run; --quick: / 5): ~0.3-0.5 s per phase here
NET_FRAMES = {"lguest": {64: 5000, 1500: 5000}, "ivc": {64: 100000, 1500: 80000},
              "ivc256": {64: 2000000, 1500: 400000}}
MB = 1e6


# --- running guests -------------------------------------------------------------------------


def _snap(d) -> dict:
    s = d.stats()
    return {"exits": sum(s["exits"].values()),
            "sends": s["hypercalls"].get("lguest_send_dma", 0),
            "hc_us": s["exit_time_us"].get("HYPERCALL", 0.0)}


CPUS: dict[str, list] = {}                     # host CPU of each domain's vCPU, last run


def run_guests(paravm, m, timeout: float, timing: bool = False) -> tuple[dict, dict]:
    """Run the manifest's guests to the end: (RESULT fields by (domain,
    phase id), stats snapshots by (domain, "b"/"e", phase id))."""
    marks: dict[tuple[str, str, int], dict] = {}

    def on_mark(d, line: str) -> None:
        _, be, pid = line.split()
        marks[(d.name, be, int(pid))] = _snap(d)

    def on_created(doms) -> None:
        CPUS.update({d.name: [v.cpu for v in d.vcpus] for d in doms})

    results = common.run_marked_guests(paravm, m, timeout, "lguest", on_mark, timing=timing,
                                on_created=on_created)
    return results, marks


def phase(marks: dict, names, pid: int, key: str) -> float:
    """Growth of stats counter *key* over phase *pid* in the domains *names*,
    less that of the empty phase 0 (its MARK e line's own console write)."""
    total = 0.0
    for n in names:
        calib = marks[(n, "e", 0)][key] - marks[(n, "b", 0)][key]
        total += marks[(n, "e", pid)][key] - marks[(n, "b", pid)][key] - calib
    return total


def _domain(name: str, args: list, devices: list[dict]) -> str:
    quoted = ", ".join(f'"{a}"' for a in args)
    text = f'[[domain]]\nname = "{name}"\nimage = "{GUEST}"\nmemory = 16\nargs = [{quoted}]\n\n'
    for dev in devices:
        text += "[[domain.device]]\n"
        for k, v in dev.items():
            val = ("true" if v else "false") if isinstance(v, bool) else f'"{v}"'
            text += f"{k} = {val}\n"
        text += "\n"
    return text


# --- part 1: block --------------------------------------------------------------------------
def make_image(path: Path, nbytes: int) -> None:
    with open(path, "wb") as f:
        left = nbytes
        while left:
            n = min(left, 4 << 20)
            f.write(os.urandom(n))
            left -= n


def expected_xor(path: Path, chunk: int) -> int:
    """XOR of the first 8 bytes (little endian) of every chunk, as guest.c."""
    x = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return x
            x ^= int.from_bytes(b[:8].ljust(8, b"\0"), "little")


def host_read(path: Path, chunk: int, kind: str) -> float:
    """Seconds to read the whole file sequentially in chunk-byte requests."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        off = 0
        if kind == "readinto":
            buf = memoryview(bytearray(chunk))
            bufs, preadv = [buf], os.preadv
            t0 = time.perf_counter()
            while off < size:
                n = preadv(fd, bufs, off)
                if n <= 0:
                    break
                off += n
            t1 = time.perf_counter()
        else:
            pread = os.pread
            t0 = time.perf_counter()
            while off < size:
                b = pread(fd, chunk, off)
                if not b:
                    break
                off += len(b)
            t1 = time.perf_counter()
    finally:
        os.close(fd)
    if off != size:
        sys.exit(f"bench: host read {off} of {size} bytes of {path}")
    return t1 - t0


def block_manifest(img: Path, args: list):
    from paravm.config import parse_manifest
    text = _domain("r", ["blk", *args], [{"type": "block", "path": str(img), "readonly": True}])
    return parse_manifest(text, img.parent / "bench-lguest-blk.toml")


def block_guest(paravm, img: Path, nops: int, chunks, xors: dict, timing: bool = False):
    """One guest run: per chunk {mbps, us (per request), exits, sends (per
    request), handler_us (VMM time per SEND_DMA: timing runs)}, and the no-op
    phase's {us (per call), handler_us}."""
    m = block_manifest(img, [nops, *chunks])
    results, marks = run_guests(paravm, m, timeout=120, timing=timing)
    out, nop = {}, None
    size = img.stat().st_size
    for (_name, pid), f in sorted(results.items(), key=lambda kv: kv[0][1]):
        if f["part"] == "nop":
            n = int(f["n"])
            nop = {"us": int(f["ns"]) / n / 1e3,
                   "handler_us": phase(marks, ["r"], pid, "hc_us") / n}
            continue
        chunk, req, ns = int(f["chunk"]), int(f["requests"]), int(f["ns"])
        if int(f["xor"], 16) != xors[chunk]:
            sys.exit(f"bench: guest read wrong data ({chunk}-byte requests): xor {f['xor']}, "
                     f"file {xors[chunk]:016x}")
        if int(f["bytes"]) != size:
            sys.exit(f"bench: guest read {f['bytes']} bytes of {size}")
        sends = phase(marks, ["r"], pid, "sends")
        out[chunk] = {"mbps": size / ns * 1e3,                 # bytes/ns * 1e3 = MB/s
                      "us": ns / req / 1e3,
                      "exits": phase(marks, ["r"], pid, "exits") / req,
                      "sends": sends / req,
                      "handler_us": phase(marks, ["r"], pid, "hc_us") / sends if sends else 0.0}
    return out, nop


def block(paravm, rounds: int, image_bytes: int, nops: int):
    """Samples by chunk: guest MB/s, host MB/s by kind, per-round ratios;
    per-request figures; the diagnostic run's handler times."""
    mbps = {c: {"guest": [], **{k: [] for k in HOST_KINDS}, "host": []} for c in CHUNKS}
    per_req = {c: {"us": [], "exits": [], "sends": []} for c in CHUNKS}
    nop_us = []
    with tempfile.TemporaryDirectory(prefix="bench-lguest-") as tmp:
        img = Path(tmp) / "disk.img"
        make_image(img, image_bytes)
        xors = {c: expected_xor(img, c) for c in CHUNKS}     # also warms the page cache
        for c in CHUNKS:
            host_read(img, c, "readinto")
        for r in range(rounds):
            order = CHUNKS[r % 2:] + CHUNKS[:r % 2]
            steps = ("guest", "host") if r % 2 == 0 else ("host", "guest")
            for step in steps:
                if step == "guest":
                    g, nop = block_guest(paravm, img, nops, order, xors)
                    nop_us.append(nop["us"])
                    for c in CHUNKS:
                        mbps[c]["guest"].append(g[c]["mbps"])
                        for k in per_req[c]:
                            per_req[c][k].append(g[c][k])
                else:
                    for c in order:
                        kinds = HOST_KINDS if r % 2 == 0 else HOST_KINDS[::-1]
                        for k in kinds:
                            mbps[c][k].append(image_bytes / host_read(img, c, k) / MB)
                        # the limit: the faster Python read of this round
                        mbps[c]["host"].append(max(mbps[c][k][-1] for k in HOST_KINDS))
        diag, diag_nop = block_guest(paravm, img, nops, CHUNKS, xors, timing=True)
    return mbps, per_req, nop_us, diag, diag_nop


# --- part 2: net ----------------------------------------------------------------------------
def net_manifest(args: list):
    from paravm.config import parse_manifest
    text = ""
    for role in ("tx", "rx"):
        text += _domain(role, ["net", role, *args], [{"type": "net", "lan": "lan0"}])
    queues = [(1, 1, 64)]                            # the barrier words
    q = 10
    for v in VARIANTS[1:]:
        for s in SIZES:
            queues.append((q, IVC_NFRAMES[v], IVC_FRAME[s]))
            q += 1
    for qid, nframes, fs in queues:
        text += (f'[[ivc]]\nid = {qid}\npeers = ["tx", "rx"]\nnframes = {nframes}\n'
                 f"frame_size = {fs}\n\n")
    return parse_manifest(text, HERE / "bench-lguest-net.toml")


def net_run(paravm, rounds: int, spin: int, retry_spin: int, nops: int, counts: dict,
            timing: bool = False):
    """frames/s samples (rx side) by size and variant in round order, per-frame
    totals, and (no-op us, no-op handler us) of the sender."""
    ns = [counts[v][s] for v in VARIANTS for s in SIZES]
    m = net_manifest([rounds, spin, retry_spin, nops, *ns])
    # generous: 1 ms per lguest frame (~0.1 ms here), 50 us per IVC frame (< 10 us)
    per_round = sum(counts["lguest"].values()) * 1e-3 + sum(
        n for v in VARIANTS[1:] for n in counts[v].values()) * 5e-5
    results, marks = run_guests(paravm, m, timeout=60 + per_round * (rounds + 1),
                                timing=timing)
    fps = {s: {v: [] for v in VARIANTS} for s in SIZES}
    keys = ("frames", "exits", "sends", "retries", "rx_sleeps", "tx_sleeps", "bells", "hc_us")
    tot = {s: {v: dict.fromkeys(keys, 0) for v in VARIANTS} for s in SIZES}
    nop = None
    for (name, pid), rx in sorted(results.items(), key=lambda kv: kv[0][1]):
        if rx["part"] == "nop":
            if name == "tx":
                n = int(rx["n"])
                nop = {"us": int(rx["ns"]) / n / 1e3,
                       "handler_us": phase(marks, ["tx"], pid, "hc_us") / n}
            continue
        if name != "rx":
            continue
        tx = results[("tx", pid)]
        s, v, n = int(rx["size"]), rx["variant"], int(rx["n"])
        fps[s][v].append(n / int(rx["ns"]) * 1e9)
        t = tot[s][v]
        t["frames"] += n
        t["exits"] += phase(marks, ["tx", "rx"], pid, "exits")
        t["sends"] += phase(marks, ["tx"], pid, "sends")
        t["hc_us"] += phase(marks, ["tx"], pid, "hc_us")
        t["retries"] += int(tx["retries"])
        t["rx_sleeps"] += int(rx["sleeps"])
        t["tx_sleeps"] += int(tx["sleeps"])
        t["bells"] += int(rx["bells"]) + int(tx["bells"])
    return fps, tot, nop


# --- main ------------------------------------------------------------------------------------
def breakdown(us: float, sends: float, nop: dict, handler_us: float) -> dict:
    """Where the time of one request (frame) goes, from a timing run: *us*
    per request measured by the guest, *sends* SEND_DMAs per request, the VMM
    time per SEND_DMA, and the no-op hypercall's round trip and VMM time (for
    comparison: the floor of any exit)."""
    vmm = sends * handler_us
    return {
        "total (timing run)": round(us, 1),
        "in the VMM's SEND_DMA handler (Python)": round(vmm, 1),
        "outside it (exit and entry, the vCPU loop, the guest)": round(us - vmm, 1),
        "no-op hypercall round trip": round(nop["us"], 1),
        "of which in the VMM's no-op handler": round(nop["handler_us"], 2),
    }


def _paired(num: list[float], den: list[float]) -> float:
    return common.summary([a / b for a, b in zip(num, den)])["median"]


def _spread(samples: list[float], nd: int) -> dict[str, float]:
    return {k: round(x, nd) for k, x in common.summary(samples).items()}


def _med(samples: list[float]) -> float:
    return common.summary(samples)["median"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="rounds of every part (default 7)")
    ap.add_argument("--quick", action="store_true",
                    help="CI size: 1 round, a 16 MiB image, 1/5 of the frames")
    ap.add_argument("--image-mib", type=int, default=64, help="block image size (default 64)")
    ap.add_argument("--spin", type=int, default=100000,
                    help="pause iterations before a waiting guest sleeps (default 100000)")
    ap.add_argument("--retry-spin", type=int, default=0,
                    help="pause iterations before the lguest sender resends to a full "
                         "receiver (default 0: at once; a resend is an exit anyway)")
    ap.add_argument("--nops", type=int, default=2000,
                    help="no-op hypercalls timed per guest run (default 2000)")
    ap.add_argument("--no-build", action="store_true", help="do not call make first")
    ap.add_argument("--check", action="store_true",
                    help="accepted for bench/run; there are no goals to check")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = 1
        args.image_mib = min(args.image_mib, 16)
        args.nops = min(args.nops, 500)
    if args.rounds <= 0 or args.image_mib <= 0 or min(args.spin, args.retry_spin) < 0 \
            or args.nops <= 0:
        ap.error("--rounds, --image-mib and --nops must be > 0, the spins >= 0")
    div = 5 if args.quick else 1
    counts = {v: {s: max(100, n // div) for s, n in per.items()} for v, per in
              NET_FRAMES.items()}

    if not args.no_build:
        common.make(common.REPO / "guest", HERE)
    paravm = common.import_paravm()
    t_start = time.monotonic()
    image_bytes = args.image_mib << 20

    print("lguest: block sequential read", file=sys.stderr, flush=True)
    mbps, per_req, blk_nop, bdiag, bdiag_nop = block(paravm, args.rounds, image_bytes, args.nops)
    print("lguest: net guest -> guest", file=sys.stderr, flush=True)
    fps, tot, net_nop = net_run(paravm, args.rounds, args.spin, args.retry_spin, args.nops,
                                counts)
    diag_counts = {v: {s: (counts[v][s] if v == "lguest" else 100) for s in SIZES}
                   for v in VARIANTS}
    dfps, dtot, dnop = net_run(paravm, 1, args.spin, args.retry_spin, args.nops, diag_counts,
                                timing=True)

    blk = {}
    for c in CHUNKS:
        s, d = mbps[c], bdiag[c]
        blk[str(c)] = {
            "mb_per_s": {k: _spread(v, 1) for k, v in s.items()},
            "samples_mb_per_s": {k: [round(x, 1) for x in v] for k, v in s.items()},
            "ratio": {f"guest/{k}": round(_paired(s["guest"], s[k]), 4)
                      for k in ("host", *HOST_KINDS)},
            "requests": image_bytes // c,
            "per_request": {
                "guest_us": round(_med(per_req[c]["us"]), 2),
                **{f"host_{k}_us": round(c / _med(s[k]), 2) for k in HOST_KINDS},  # B / MB/s
                "vmm_exits": round(_med(per_req[c]["exits"]), 4),
                "send_dma": round(_med(per_req[c]["sends"]), 4),
            },
            "where_the_time_goes_us": breakdown(d["us"], d["sends"], bdiag_nop, d["handler_us"]),
        }

    net = {}
    for sz in SIZES:
        f, t, dt = fps[sz], tot[sz], dtot[sz]["lguest"]
        us_frame = 1e6 / _med(dfps[sz]["lguest"])
        net[str(sz)] = {
            "frames_per_s": {v: _spread(f[v], 0) for v in VARIANTS},
            "mb_per_s": {v: round(_med(f[v]) * sz / MB, 2) for v in VARIANTS},
            "samples_frames_per_s": {v: [round(x) for x in f[v]] for v in VARIANTS},
            "us_per_frame": {v: round(1e6 / _med(f[v]), 3) for v in VARIANTS},
            "reference_ratio": {f"lguest/{v}": round(_paired(f["lguest"], f[v]), 4)
                                for v in VARIANTS[1:]},
            "frames_per_phase": {v: counts[v][sz] for v in VARIANTS},
            "per_frame": {v: {"vmm_exits": round(t[v]["exits"] / t[v]["frames"], 4),
                              "send_dma": round(t[v]["sends"] / t[v]["frames"], 4),
                              "resends": round(t[v]["retries"] / t[v]["frames"], 4),
                              "doorbells": round(t[v]["bells"] / t[v]["frames"], 4),
                              "rx_sleeps": round(t[v]["rx_sleeps"] / t[v]["frames"], 4),
                              "tx_sleeps": round(t[v]["tx_sleeps"] / t[v]["frames"], 4)}
                          for v in VARIANTS},
            "where_the_time_goes_us": breakdown(
                us_frame, dt["sends"] / dt["frames"], dnop,
                dt["hc_us"] / dt["sends"] if dt["sends"] else 0.0),
        }

    data = {
        "benchmark": NAME,
        "description": "lguest I/O: block sequential read through the lguest block driver "
                       "(4 KiB and 64 KiB requests) vs Python reading the same file on the host "
                       "(os.preadv into a buffer, os.pread); guest -> guest Ethernet frames "
                       "(64 B, 1500 B) on an lguest LAN, with the same frames over IVC queues "
                       "between the same guests as a reference only",
        "rounds": args.rounds, "quick": args.quick,
        "config": {"image_bytes": image_bytes, "chunks": list(CHUNKS),
                   "frame_sizes": list(SIZES), "lguest_rx_buffers": 8,
                   "ivc_nframes": IVC_NFRAMES, "ivc_frame_size": IVC_FRAME, "spin": args.spin,
                   "retry_spin": args.retry_spin, "nops": args.nops},
        "block": blk,
        "net": net,
        "exit_round_trip_us": {"block guest": _spread(blk_nop, 2),
                               "net sender": round(net_nop["us"], 2)},
        "vcpu_cpus": dict(CPUS),
        "machine": common.machine_info(),
        "seconds": round(time.monotonic() - t_start, 1),
    }
    path = common.write_results(NAME, data)
    print_summary(data)
    print(f"wrote {path.relative_to(common.REPO)} ({data['seconds']} s)")
    return 0


def print_summary(data: dict) -> None:
    rounds, b, n = data["rounds"], data["block"], data["net"]
    for c in CHUNKS:
        e = b[str(c)]
        print(f"RESULT part=blk chunk={c} guest_mbps={e['mb_per_s']['guest']['median']:.1f} "
              f"host_mbps={e['mb_per_s']['host']['median']:.1f} "
              f"readinto_mbps={e['mb_per_s']['readinto']['median']:.1f} "
              f"pread_mbps={e['mb_per_s']['pread']['median']:.1f} "
              f"guest_over_host={e['ratio']['guest/host']:.4f} "
              f"exits_per_request={e['per_request']['vmm_exits']:.3f}")
    for s in SIZES:
        e = n[str(s)]
        f = e["frames_per_s"]
        print(f"RESULT part=net size={s} lguest_fps={f['lguest']['median']:.0f} "
              f"ivc_fps={f['ivc']['median']:.0f} ivc256_fps={f['ivc256']['median']:.0f} "
              f"lguest_over_ivc={e['reference_ratio']['lguest/ivc']:.4f} "
              f"exits_per_frame={e['per_frame']['lguest']['vmm_exits']:.3f}")

    mib = data["config"]["image_bytes"] >> 20
    print(f"\nblock sequential read of a {mib} MiB image (page cache warm), {rounds} round(s): "
          "median MB/s; ratios = medians of per-round ratios; host = the faster Python read "
          "of the round")
    rows = []
    for c in CHUNKS:
        e = b[str(c)]
        pr = e["per_request"]
        for k, name in (("guest", "guest, lguest block driver"),
                        ("host", "host Python, the faster of:"),
                        ("readinto", "  os.preadv into a buffer"),
                        ("pread", "  os.pread")):
            s = e["mb_per_s"][k]
            us = pr.get(f"host_{k}_us", pr["guest_us"] if k == "guest" else None)
            rows.append([f"{c // 1024} KiB {name}", f"{s['median']:.1f}", f"{s['min']:.1f}",
                         f"{s['max']:.1f}", "" if us is None else f"{us:.2f}",
                         "" if k == "guest" else f"{e['ratio']['guest/' + k]:.4f}",
                         f"{pr['vmm_exits']:.3f}" if k == "guest" else ""])
    print(common.table(["config", "MB/s", "min", "max", "us/request", "guest / this",
                        "exits/req"], rows))
    print("where a request's time goes (us, a run with the VMM's exit timing on):")
    for c in CHUNKS:
        w = b[str(c)]["where_the_time_goes_us"]
        print(f"  {c // 1024} KiB: " + "; ".join(f"{k} {v}" for k, v in w.items()))

    print(f"\nnet guest -> guest (the receiver's rate), {rounds} round(s): median frames/s; the "
          "IVC rows are only a reference (the same guests and frames over IVC queues)")
    rows = []
    for s in SIZES:
        e = n[str(s)]
        for v, name in (("lguest", "lguest LAN (8 rx buffers)"),
                        ("ivc", "IVC queue, 8 frames (reference)"),
                        ("ivc256", "IVC queue, 256 frames (reference)")):
            f, pf = e["frames_per_s"][v], e["per_frame"][v]
            ratio = "" if v == "lguest" else f"{e['reference_ratio']['lguest/' + v]:.4f}"
            rows.append([f"{s} B {name}", f"{f['median']:,.0f}", f"{e['mb_per_s'][v]:.2f}",
                         f"{f['min']:,.0f}", f"{f['max']:,.0f}", f"{e['us_per_frame'][v]:.2f}",
                         ratio, f"{pf['vmm_exits']:.3f}", f"{pf['resends']:.4f}",
                         f"{pf['rx_sleeps']:.4f}", f"{pf['doorbells']:.3f}"])
    print(common.table(["config", "frames/s", "MB/s", "min", "max", "us/frame", "lguest / this",
                        "exits/fr", "resends/fr", "rx sleeps/fr", "bells/fr"], rows))
    print("where a frame's time goes (us, a run with the VMM's exit timing on):")
    for s in SIZES:
        w = n[str(s)]["where_the_time_goes_us"]
        print(f"  {s} B: " + "; ".join(f"{k} {v}" for k, v in w.items()))


if __name__ == "__main__":
    sys.exit(main())
