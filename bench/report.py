#!/usr/bin/env python3
"""The benchmark table of the README, from bench/results/*.json.

`bench/run` calls this after the benchmarks; it writes bench/results/table.md
and, with --readme, replaces the table between the README's
`<!-- bench:begin -->` and `<!-- bench:end -->` markers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _load(name: str) -> dict | None:
    try:
        return json.loads((RESULTS / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def rows() -> list[tuple[str, str, str, str, str]]:
    out = []
    ex = _load("exit_roundtrip")
    if ex:
        ns, r = ex["ns_per_call"], ex["ratios"]
        goal = ex["goal"]["paravm_regs/c"]
        out.append(("hypercall round trip from ring 3, register form (`exit_roundtrip`)",
                    f"{ns['paravm-regs'] / 1e3:.1f} us",
                    f"C KVM loop, same exit: {ns['c'] / 1e3:.1f} us",
                    f"{r['paravm_regs/c']:.2f}x", f"≤ {goal:.2f}x: {'met' if r['paravm_regs/c'] <= goal else 'not met'}"))
        out.append(("hypercall round trip, argument-block form",
                    f"{ns['paravm-block'] / 1e3:.1f} us",
                    f"C KVM loop, block form: {ns['c-block'] / 1e3:.1f} us",
                    f"{r['paravm_block/c_block']:.2f}x", "—"))
        if "paravm-regs-unpinned" in ns:
            out.append(("register form, vCPU thread pinned (default) vs not pinned",
                        f"{ns['paravm-regs'] / 1e3:.1f} us",
                        f"not pinned: {ns['paravm-regs-unpinned'] / 1e3:.1f} us",
                        f"{r['paravm_regs/paravm_regs_unpinned']:.2f}x",
                        "pinning cheaper (< 1.00x): "
                        + ("met" if r["paravm_regs/paravm_regs_unpinned"] < 1 else "not met")))
        out.append(("`KVM_GET_REGS`+`KVM_SET_REGS` instead of synced registers (C)",
                    f"{ns['c-getregs'] / 1e3:.1f} us", f"C, synced: {ns['c'] / 1e3:.1f} us",
                    f"{r['c_getregs/c']:.2f}x", "why the ABI uses `KVM_CAP_SYNC_REGS`"))
    st = _load("startup")
    if st:
        p = st["process_start_to_first_output_ms"]
        v = st["vm_create_to_first_output_ms"]
        med = p["paravm"]["median"]
        out.append(("process start → guest's first output (`startup`)", f"{med:.1f} ms",
                    f"`python -c`: {p['python -c']['median']:.1f} ms",
                    f"{med / p['python -c']['median']:.2f}x",
                    f"≤ 40 ms: {'met' if med <= 40 else 'not met'}"))
        if "paravm, no image cache" in p:
            nc = p["paravm, no image cache"]["median"]
            out.append(("process start → first output, image cache on (default) vs off",
                        f"{med:.1f} ms", f"no image cache: {nc:.1f} ms", f"{med / nc:.2f}x",
                        "why checked ELF facts are cached"))
        warm = v["warm"]["median"]
        out.append(("VM create → first output, in process (warm; cold "
                    f"{v['cold']['median']:.1f} ms)", f"{warm:.2f} ms", "goal 2 ms",
                    f"{warm / 2:.2f}x", f"≤ 2 ms: {'met' if warm <= 2 else 'not met'}"))
    ms = _load("memslot")
    if ms:
        m = {k: x["median"] for k, x in ms["ms"].items()}
        before, after = m["RAM slot before irqchip (paravm)"], m["RAM slot after irqchip"]
        out.append(("64 MiB RAM memslot added before the irqchip (`memslot`)",
                    f"{before:.2f} ms", f"after the irqchip: {after:.2f} ms",
                    f"{before / after:.3f}x", "why RAM is mapped first"))
    rss = _load("rss")
    if rss:
        k = "paravm run (64 MiB guest)"
        mb = rss["peak_rss_mb"][k]["median"]
        out.append(("peak RSS of `paravm run`, one 64 MiB guest (`rss`)", f"{mb:.1f} MiB",
                    f"`python -c pass`: {rss['peak_rss_mb']['python -c pass']['median']:.1f} MiB",
                    f"{mb / rss['peak_rss_mb']['python -c pass']['median']:.2f}x",
                    f"≤ 30 MB: {'met' if mb <= 30 else 'not met'}"))
    out += _ivc_rows()
    out += _lguest_rows()
    out += _grant_rows()
    out += _pvz_rows()
    out += _mpt_rows()
    out += _pipeline_rows()
    return out


def _pipeline_rows() -> list[tuple[str, str, str, str, str]]:
    pl = _load("pipeline")
    if not pl:
        return []
    m, r, goal = pl["mb_per_s"], pl["ratios"], pl["goal"]["pipeline/disk"]
    mib = pl["config"]["file_bytes"] >> 20
    return [
        (f"examples/pipeline, {mib} MiB file: disk → reader → IVC → hasher → grant → host "
         "(`pipeline`)", f"{m['pipeline']['median']:.0f} MB/s",
         f"the lguest block read alone, same reads: {m['disk']['median']:.0f} MB/s",
         f"{r['pipeline/disk']:.2f}x",
         f"≥ {goal:.2f}x: {'met' if r['pipeline/disk'] >= goal else 'not met'}"),
        ("examples/pipeline vs `sha256sum` of the same file on the host",
         f"{m['pipeline']['median']:.0f} MB/s",
         f"`sha256sum`: {m['sha256sum']['median']:.0f} MB/s",
         f"{r['pipeline/sha256sum']:.2f}x", "—"),
    ]


def _ivc_rows() -> list[tuple[str, str, str, str, str]]:
    iv = _load("ivc")
    if not iv:
        return []
    out = []
    nframes = iv["config"]["nframes"]
    for fs, label in (("4096", "4 KiB"), ("1024", "1 KiB"), ("64", "64 B")):
        e = iv["throughput"][fs]
        gb, r = e["gb_per_s"], e["ratio"]["ivc/plain"]
        goal = e.get("goal")
        out.append((f"IVC guest → guest, {label} frames, {nframes}-frame queue"
                    + (" (`ivc`)" if fs == "4096" else ""),
                    f"{gb['ivc']['median']:.2f} GB/s",
                    f"plain shared-memory ring, same guests: {gb['plain']['median']:.2f} GB/s",
                    f"{r:.2f}x",
                    f"≥ {goal['ivc/plain']:.2f}x: {'met' if goal['met'] else 'not met'}"
                    if goal else "—"))
    epf = iv["ivc_exits_per_frame"]
    out.append(("IVC guest → guest, VMM exits per frame in the data phase",
                f"{epf:.2g}", "—", "—", f"0: {'met' if epf == 0 else 'not met'}"))
    p = iv["pingpong"]
    us, ratio = p["us_per_round_trip"], p["ratio"]["kernel/hypercall"]
    out.append(("IVC guest ↔ guest ping-pong, in-kernel doorbells",
                f"{us['kernel']['median']:.1f} us",
                f"doorbell relayed by the VMM (hypercall): {us['hypercall']['median']:.1f} us",
                f"{ratio:.2f}x", f"in-kernel faster: {'met' if ratio < 1 else 'not met'}"))
    h = iv["host"]
    for d, label in (("h2g", "host → guest"), ("g2h", "guest → host")):
        f, r = h[d]["frames_per_s"], h[d]["ratio"]["ivc/os.pipe"]
        out.append((f"IVC {label}, 1 KiB frames, Python `HostEndpoint`",
                    f"{f['ivc']['median'] / 1e3:.0f} k frames/s",
                    f"`os.pipe`: {f['os.pipe']['median'] / 1e3:.0f} k/s; `multiprocessing.Pipe`: "
                    f"{f['multiprocessing.Pipe']['median'] / 1e3:.0f} k/s",
                    f"{r:.2f}x", f"≥ os.pipe: {'met' if r >= 1 else 'not met'}"))
    return out


def _lguest_rows() -> list[tuple[str, str, str, str, str]]:
    lg = _load("lguest")
    if not lg:
        return []
    out = []
    mib = lg["config"]["image_bytes"] >> 20
    for c, label in (("4096", "4 KiB"), ("65536", "64 KiB")):
        e = lg["block"][c]
        mb = e["mb_per_s"]
        out.append((f"lguest block sequential read, {label} requests, {mib} MiB image"
                    + (" (`lguest`)" if c == "4096" else ""),
                    f"{mb['guest']['median']:.1f} MB/s",
                    f"Python `os.pread`/`os.preadv` of the same file: "
                    f"{mb['host']['median']:.0f} MB/s",
                    f"{e['ratio']['guest/host']:.3f}x",
                    f"— ({e['per_request']['vmm_exits']:.0f} exit, "
                    f"{e['per_request']['guest_us']:.0f} us per request)"))
    for sz in ("64", "1500"):
        e = lg["net"][sz]
        f = e["frames_per_s"]
        out.append((f"lguest net guest → guest, {sz} B frames",
                    f"{f['lguest']['median'] / 1e3:.1f} k frames/s "
                    f"({e['mb_per_s']['lguest']:.1f} MB/s)",
                    f"reference only: IVC queue of 8 frames, same guests: "
                    f"{f['ivc']['median'] / 1e3:.0f} k/s",
                    f"{e['reference_ratio']['lguest/ivc']:.3f}x",
                    f"— ({e['per_frame']['lguest']['vmm_exits']:.2f} exits per frame)"))
    return out


def _grant_rows() -> list[tuple[str, str, str, str, str]]:
    gr = _load("grant")
    if not gr:
        return []
    out = []
    for n, d in gr["map_latency_us"].items():
        out.append((f"gntdev map + mmap + unmap, {n} page{'s' if n != '1' else ''}"
                    + (" (`grant`)" if n == "1" else ""),
                    f"{d['paravm']['median']:.0f} us",
                    f"`mmap` of the same pages from the guest's memfd: "
                    f"{d['mmap']['median']:.0f} us",
                    f"{d['ratio']['paravm/mmap']:.1f}x", "—"))
    c = gr["grant_copy_mb_per_s"]
    out.append(("gntdev grant_copy, 64 × 4 KiB segments per call",
                f"{c['grant_copy']['median']:.0f} MB/s",
                f"memcpy of the same bytes: {c['memcpy']['median']:.0f} MB/s",
                f"{c['ratio']['grant_copy/memcpy']:.3f}x", "—"))
    v = gr["vchan_mb_per_s"]
    out.append((f"vchan guest → host, {v['bytes'] >> 20} MiB, 64 KiB rings",
                f"{v['vchan']['median']:.0f} MB/s",
                f"`os.pipe` between two host processes: {v['os.pipe']['median']:.0f} MB/s",
                f"{v['ratio']['vchan/os.pipe']:.2f}x", "—"))
    return out


def _pvz_rows() -> list[tuple[str, str, str, str, str]]:
    pv = _load("pvz")
    if not pv:
        return []
    c = pv["call_roundtrip_us"]
    out = [("PVZ call round trip (DestroyDevConfig) (`pvz`)", f"{c['pvz_call']['median']:.0f} us",
            f"bare hypercall (`HC_NOP`): {c['nop']['median']:.0f} us",
            f"{c['ratio']['pvz_call/nop']:.2f}x", "—")]
    cmd = pv["commands_per_s"]
    kib = cmd["fill_bytes"] >> 10
    for key, label in (("equal", "equal priorities"), ("prio 4 vs 1", "priorities 4 vs 1")):
        d = cmd[key]
        out.append((f"example GPU, two guests' {kib} KiB FILLs/s, {label}",
                    f"OSID 1: {d['osid1']['median'] / 1e3:.1f} k/s",
                    f"OSID 2: {d['osid2']['median'] / 1e3:.1f} k/s",
                    f"OSID 1 share {d['share_osid1']:.2f}", "—"))
    return out


def _mpt_rows() -> list[tuple[str, str, str, str, str]]:
    mp = _load("mpt")
    if not mp:
        return []
    rt, tw, pt = mp["roundtrip_us"], mp["tracked_write_us"], mp["page_track_ms"]
    dc = mp["device_commands_per_s"]
    w = dc["fill_w"]
    return [
        ("trapped MMIO write round trip (`mpt`)", f"{rt['trapped_mmio_write']['median']:.0f} us",
         f"bare hypercall (`HC_NOP`): {rt['hc_nop']['median']:.0f} us",
         f"{rt['ratio']['mmio/nop']:.2f}x", "—"),
        ("8-byte store to a write-tracked page (exit, VMM completes it, handler)",
         f"{tw['tracked']['median']:.0f} us",
         f"`HC_NOP` in the same guest: {tw['hc_nop']['median']:.0f} us; untracked store "
         f"{tw['untracked']['median'] * 1e3:.0f} ns",
         f"{tw['ratio']['tracked/nop']:.2f}x", "—"),
        ("`disable_page_track` + `enable_page_track` (memslot merge + split, vCPU held)",
         f"{pt['disable_enable']['median']:.2f} ms",
         f"one raw 4 KiB memslot add + delete: {pt['raw_slot_add_delete']['median']:.2f} ms "
         f"(a domain's first change: {pt['first_enable']['median']:.1f} ms, one-off)",
         f"{pt['ratio']['toggle/raw_slot']:.1f}x", "—"),
        (f"example mediated GPU commands/s, {dc['per_doorbell']} per doorbell",
         f"NOP: {dc['nop']['median'] / 1e3:.0f} k/s",
         f"FILL {w}x{w} px: {dc[f'fill_{w}x{w}']['median'] / 1e3:.1f} k/s", "no baseline", "—"),
    ]


def table() -> str:
    lines = ["| benchmark | paravm | baseline (same run) | ratio | goal |",
             "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows()]
    return "\n".join(lines)


def main() -> int:
    text = table()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "table.md").write_text(text + "\n")
    print(text)
    if "--readme" in sys.argv[1:]:
        readme = README.read_text()
        if BEGIN not in readme or END not in readme:
            sys.exit(f"bench/report: {README} has no {BEGIN} ... {END} markers")
        head, rest = readme.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        README.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
        print(f"updated {README.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
