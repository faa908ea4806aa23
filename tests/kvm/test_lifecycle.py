"""Domain life cycle end to end: SMP hello, exit status, stopping, the CLI's
exit codes, and 200 create/destroy cycles without leaking fds, threads or
mappings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import paravm

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.kvm

WAIT = 30.0


# --- the Python API ------------------------------------------------------------------

def test_hello_two_domains_two_vcpus(hello_elf):
    with paravm.Hypervisor(output=None) as hv:
        a = hv.create_domain("alice", hello_elf, memory_mib=16, vcpus=2)
        b = hv.create_domain("bob", hello_elf, memory_mib=16, vcpus=2, args=["0"])
        assert (a.domid, b.domid) == (1, 2)
        hv.start_all()
        results = hv.wait_all(WAIT)
        assert results is not None
        for d in (a, b):
            assert results[d.name].how == "exited" and results[d.name].status == 0
            text = d.console.text
            assert f"hello from {d.name} (domain {d.domid}, 2 vCPU, 16 MiB)\n" in text
            assert f"hello from vCPU 1 of {d.name}\n" in text
            assert text.endswith(f"{d.name} exits with status 0\n")
            assert d.stats()["hypercalls"]["exit"] == 1


@pytest.mark.parametrize("arg, status, code", [("7", 7, 7), ("0", 0, 0), ("-1", -1, 255)])
def test_exit_status_propagation(hello_elf, arg, status, code):
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("st", hello_elf, memory_mib=8, args=[arg])
        hv.start_all()
        r = d.wait(WAIT)
        assert r is not None
        assert (r.how, r.status, r.exit_code) == ("exited", status, code)
        assert r.describe() == f"exited with status {status}"
        assert d.console.text.endswith(f"st exits with status {status}\n")


def test_console_sink_gets_lines_with_the_domain_name(guests):
    lines = []
    with paravm.Hypervisor(output=lambda name, line: lines.append((name, line))) as hv:
        d = hv.create_domain("g", guests.good, memory_mib=8, args=["0", "1"])
        hv.start_all()
        assert d.wait(WAIT).how == "exited"
    assert lines == [("g", "good: start"), ("g", "good: tick 1"), ("g", "good: done 0")]


@pytest.mark.parametrize("mode", ["forever", "spin"])
def test_host_stops_a_guest_that_never_exits(guests, mode):
    """A guest halted in the stub ("forever") or busy in ring 3 ("spin") is
    kicked out of KVM_RUN by stop(); the result says it was stopped."""
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("loop", guests.hostile, memory_mib=8, args=[mode])
        d.start()
        with pytest.raises(RuntimeError):
            d.start()
        assert d.wait(0.3) is None and not d.stopped
        d.stop("enough")
        r = d.wait(WAIT)                 # a stop that never lands fails here
        assert r is not None and (r.how, r.reason, r.exit_code) == ("stopped", "enough", 0)
        assert d.console.text == f"hostile: {mode}\n"
        assert all(v.thread is not None and not v.thread.is_alive() for v in d.vcpus)


def test_destroy_a_running_domain(guests):
    before = threading.active_count()
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("spin", guests.hostile, memory_mib=8, vcpus=2, args=["spin"])
        hv.start_all()
        time.sleep(0.1)
        assert threading.active_count() == before + 2
        hv.destroy(d)
        assert "spin" not in hv.domains
        assert d.result.how == "stopped"
        assert threading.active_count() == before
        d.destroy()   # idempotent


def test_stop_before_start(guests):
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("never", guests.good, memory_mib=8)
        d.stop("not wanted")
        r = d.wait(1)
        assert r is not None and r.how == "stopped" and d.stopped
        hv.start_all()   # a stopped domain is not started
        assert d.t_start_ns is None and d.console.text == ""


def test_wait_all_times_out_then_stop_all(guests):
    with paravm.Hypervisor(output=None) as hv:
        hv.create_domain("f", guests.hostile, memory_mib=8, args=["forever"])
        hv.create_domain("g", guests.good, memory_mib=8, args=["0", "0"])
        hv.start_all()
        t0 = time.monotonic()
        assert hv.wait_all(0.3) is None
        assert time.monotonic() - t0 >= 0.25          # it waited its timeout
        assert hv.domains["g"].wait(WAIT).how == "exited"
        hv.stop_all("done")
        results = hv.wait_all(WAIT)
        assert results["f"].how == "stopped" and results["f"].reason == "done"
        assert results["g"].how == "exited"


# --- the CLI ----------------------------------------------------------------------------

def _paravm() -> list[str]:
    exe = REPO / ".venv" / "bin" / "paravm"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "paravm"]


def cli(*args, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(_paravm() + ["run", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def manifest(tmp_path: Path, *domains: tuple[str, Path, list[str]], name="m.toml") -> Path:
    text = ""
    for dname, image, args in domains:
        quoted = ", ".join(f'"{a}"' for a in args)
        text += (f'[[domain]]\nname = "{dname}"\nimage = "{image}"\nmemory = 16\n'
                 f"args = [{quoted}]\n\n")
    path = tmp_path / name
    path.write_text(text)
    return path


def test_cli_exit_code_is_the_first_nonzero_status_in_manifest_order(guests, tmp_path):
    g = guests.good
    # c exits first (no ticks) with 5, b later with 3: b comes first in the manifest
    m = manifest(tmp_path, ("a", g, ["0", "0"]), ("b", g, ["3", "2"]), ("c", g, ["5", "0"]))
    p = cli(m)
    assert p.returncode == 3, p.stderr
    assert "b| good: done 3\n" in p.stdout and "c| good: done 5\n" in p.stdout
    assert "a| good: start\n" in p.stdout
    assert p.stderr == ""


def test_cli_all_zero(guests, tmp_path):
    m = manifest(tmp_path, ("a", guests.good, ["0", "0"]), ("b", guests.good, ["0", "1"]))
    p = cli(m)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("good: done 0") == 2


@pytest.mark.parametrize("order, code", [("good-first", 4), ("crash-first", 70)])
def test_cli_crash_is_70(guests, tmp_path, order, code):
    doms = [("ok", guests.good, ["4", "0"]), ("bad", guests.hostile, ["null"])]
    if order == "crash-first":
        doms.reverse()
    p = cli(manifest(tmp_path, *doms))
    assert p.returncode == code, p.stderr
    assert re.search(r"^paravm: domain bad crashed on vCPU 0: #PF page fault at rip=0x[0-9a-f]+ "
                     r"error=0x4 address=0x0 \(ring 3\)$", p.stderr, re.M), p.stderr
    assert re.search(r"^\s+rip=[0-9a-f]{16}", p.stderr, re.M), p.stderr
    assert "Traceback" not in p.stderr
    assert "bad| hostile: null\n" in p.stdout and "ok| good: done 4\n" in p.stdout


def test_cli_crash_alone_is_70(guests, tmp_path):
    p = cli(manifest(tmp_path, ("bad", guests.triple, [])))
    assert p.returncode == 70, p.stderr
    assert "paravm: domain bad crashed on vCPU 0: triple fault" in p.stderr


def test_cli_timeout_is_124(guests, tmp_path):
    m = manifest(tmp_path, ("f", guests.hostile, ["forever"]), ("s", guests.hostile, ["spin"]))
    t0 = time.monotonic()
    p = cli("--timeout", "0.5", m)
    elapsed = time.monotonic() - t0
    assert p.returncode == 124, p.stderr
    assert elapsed >= 0.5, elapsed                # the guests ran until the timeout
    assert "f| hostile: forever\n" in p.stdout and "s| hostile: spin\n" in p.stdout
    assert p.stderr.strip().splitlines()[-1] == \
        "paravm: timeout after 0.5 s: all domains stopped"
    assert "Traceback" not in p.stderr


def _one_error_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert p.stdout == ""
    return lines[0]


def test_cli_bad_manifest_is_2_with_one_line(guests, tmp_path):
    m = tmp_path / "bad.toml"
    m.write_text(f'[[domain]]\nname = "a"\nimage = "{guests.good}"\nmemory = "lots"\n')
    line = _one_error_line(cli(m))
    assert line == f"paravm: {m}: domain[0].memory: expected int, got str"


def test_cli_unknown_key_is_2(guests, tmp_path):
    m = tmp_path / "bad.toml"
    m.write_text(f'[[domain]]\nname = "a"\nimage = "{guests.good}"\ncolour = "red"\n')
    line = _one_error_line(cli(m))
    assert line == f"paravm: {m}: domain[0].colour: unknown key"


def test_cli_missing_manifest_is_2(tmp_path):
    m = tmp_path / "nope.toml"
    line = _one_error_line(cli(m))
    assert line.startswith(f"paravm: {m}: file not found")


def test_cli_bad_image_is_2(tmp_path):
    img = tmp_path / "junk.elf"
    img.write_bytes(b"this is not an ELF file" * 4)
    m = manifest(tmp_path, ("a", img, []))
    line = _one_error_line(cli(m))
    assert line.startswith(f"paravm: {m}: domain image: {img}: not a valid ELF file")


def test_cli_image_with_a_huge_section_is_2(hello_elf, tmp_path):
    import struct

    from elftools.elf.elffile import ELFFile
    with open(hello_elf, "rb") as f:
        elf = ELFFile(f)
        idx = next(i for i, sec in enumerate(elf.iter_sections())
                   if sec.name == ".paravm_image")
        size_at = elf["e_shoff"] + idx * elf["e_shentsize"] + 32   # Elf64_Shdr.sh_size
    data = bytearray(hello_elf.read_bytes())
    struct.pack_into("<Q", data, size_at, 1 << 63)
    img = tmp_path / "huge.elf"
    img.write_bytes(bytes(data))
    m = manifest(tmp_path, ("a", img, []))
    line = _one_error_line(cli(m))
    assert line.startswith(f"paravm: {m}: domain image: {img}: ")


def test_cli_stats(guests, tmp_path):
    p = cli("--stats", manifest(tmp_path, ("a", guests.good, ["0", "1"])))
    assert p.returncode == 0, p.stderr
    err = p.stderr
    assert "stats a:" in err
    total = int(re.search(r"^  exits: (\d+)$", err, re.M)[1])
    io_out = int(re.search(r"^    HYPERCALL\s+(\d+)\s", err, re.M)[1])
    calls = {m[1]: int(m[2]) for m in re.finditer(r"hypercall (\w+)\s+(\d+)$", err, re.M)}
    # good 0 1: 3 lines, 1 boot mark, 1 exit; clock_ns >= 2 (one 50 ms tick)
    assert calls["console_write"] == 3 and calls["exit"] == 1 and calls["boot_mark"] == 1
    assert calls["clock_ns"] >= 2
    assert io_out == sum(calls.values())          # every hypercall is one exit
    kinds = {m[1]: int(m[2]) for m in
             re.finditer(r"^    ([A-Z_]+)\s+(\d+)\s+[\d.]+ ms in VMM", err, re.M)}
    assert sum(kinds.values()) == total and kinds["HYPERCALL"] == io_out
    per_exit = float(re.search(r"^    HYPERCALL\s+\d+\s+[\d.]+ ms in VMM\s+([\d.]+) us/exit",
                               err, re.M)[1])
    assert 0 < per_exit < 10_000                   # --stats times the exits
    assert re.search(r"boot: domain create -> main: [\d.]+ ms", err)


# --- no leaks -------------------------------------------------------------------------------

def _resources() -> tuple[int, int, int]:
    with open("/proc/self/maps") as f:
        maps = sum(1 for _ in f)
    return len(os.listdir("/proc/self/fd")), threading.active_count(), maps


def test_200_create_destroy_cycles_leak_nothing(guests):
    with paravm.Hypervisor(output=None) as hv:
        def cycle(i: int) -> None:
            d = hv.create_domain(f"c{i}", guests.good, memory_mib=4, args=[str(i & 0x7F), "0"])
            d.start()
            r = d.wait(WAIT)
            assert r is not None and r.how == "exited" and r.status == i & 0x7F, r
            assert d.console.text.endswith(f"good: done {i & 0x7F}\n")
            hv.destroy(d)

        for i in range(5):          # warm-up: caches, lazy imports, allocator arenas
            cycle(i)
        fds0, threads0, maps0 = _resources()
        live0 = hv.machine.live_ranges
        for i in range(5, 205):
            cycle(i)
        fds1, threads1, maps1 = _resources()
        assert not hv.domains
        assert hv.machine.live_ranges == live0
        assert fds1 <= fds0, (fds0, fds1)
        assert threads1 <= threads0, (threads0, threads1)
        assert maps1 <= maps0 + 2, (maps0, maps1)


def test_make_run_example_through_the_cli():
    """`make run`'s command: the shipped two-domain hello manifest."""
    p = cli(REPO / "examples/hello/hello.toml")
    assert p.returncode == 0, p.stderr
    for name in ("alice", "bob"):
        assert f"{name}| hello from {name} (domain" in p.stdout
        assert f"{name}| hello from vCPU 1 of {name}" in p.stdout
        assert f"{name}| {name} exits with status 0" in p.stdout


def test_a_missing_capability_is_one_line_and_2(tmp_path, hello_elf):
    m = manifest(tmp_path, ("a", hello_elf, []))
    code = ("import sys; import paravm.kvm.abi as a; "
            "a.REQUIRED_CAPS[4095] = 'KVM_CAP_IMAGINARY (a capability no kernel has)'; "
            "from paravm.cli.main import main; sys.exit(main(['run', sys.argv[1]]))")
    p = subprocess.run([sys.executable, "-c", code, str(m)], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines == ["paravm: /dev/kvm lacks KVM_CAP_IMAGINARY (a capability no kernel has): "
                     "paravm needs it; use a newer kernel or a KVM backend that provides it"]


def test_many_hypervisors_release_everything(hello_elf):
    def counts():
        with open("/proc/self/maps") as f:
            maps = sum(1 for _ in f)
        return len(os.listdir("/proc/self/fd")), threading.active_count(), maps

    for _ in range(3):      # warm-up
        with paravm.Hypervisor(output=None) as hv:
            hv.create_domain("a", hello_elf, memory_mib=4).start()
            hv.wait_all(10)
    before = counts()
    for _ in range(50):
        with paravm.Hypervisor(output=None) as hv:
            hv.loop.call_soon(lambda: None)
            hv.create_domain("a", hello_elf, memory_mib=4).start()
            assert hv.wait_all(10) is not None
    after = counts()
    assert after[0] == before[0] and after[1] == before[1]
    assert after[2] <= before[2] + 2
