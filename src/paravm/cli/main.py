"""``paravm run MANIFEST``: boot every domain of a manifest and wait for them.

Exit status: 0 when every domain exited 0 (and the manifest's host program
returned 0); otherwise the host program's status if it is not 0 (70 if it
raised), else the first non-zero domain status in manifest order (a crashed
domain counts as 70); 2 for a bad manifest, a bad --input, a host program that
does not load, a bad image or a missing /dev/kvm capability (one line, no
traceback); 124 when ``--timeout`` expired; 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130


def _err(msg: str) -> None:
    sys.stderr.write(f"paravm: {msg}\n")
    sys.stderr.flush()


def _formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's formatter with the width from os (argparse's default asks
    shutil, an import that costs ~4 ms of start-up)."""
    try:
        width = os.get_terminal_size().columns - 2
    except OSError:
        width = 78
    return argparse.HelpFormatter(prog, width=max(40, width))


def main(argv: list[str] | None = None) -> int:
    t_process = time.perf_counter_ns()
    parser = argparse.ArgumentParser(prog="paravm", description="A hypervisor in Python on KVM.",
                                     formatter_class=_formatter)
    # prog= spares add_subparsers a HelpFormatter (and its shutil/locale imports).
    sub = parser.add_subparsers(dest="command", required=True, prog="paravm")
    run = sub.add_parser("run", help="boot the domains of a manifest", formatter_class=_formatter)
    run.add_argument("manifest", help="the manifest (TOML)")
    run.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                     help="stop every domain after this long (exit status 124)")
    run.add_argument("--stats", action="store_true",
                     help="print exit counts, time per exit reason and boot times")
    run.add_argument("--kvm", default="/dev/kvm", metavar="DEVICE",
                     help="the KVM device (default /dev/kvm)")
    run.add_argument("--input", default=None, metavar="FILE",
                     help='the file a block device with path = "{input}" serves, also given '
                          "to the manifest's host program")
    run.add_argument("--capture", action="append", default=[], metavar="LAN=FILE",
                     help="write every frame delivered on lguest LAN to a pcap FILE "
                          "(repeatable)")
    sub.add_parser("version", help="print the version", formatter_class=_formatter)
    args = parser.parse_args(argv)
    if args.command == "version":
        from .. import __version__
        print(f"paravm {__version__}")
        return 0
    try:
        return cmd_run(args, t_process)
    finally:
        _quiet_stdout_on_exit()


def cmd_run(args, t_process: int) -> int:
    from ..config import ManifestError, load_manifest
    from ..kvm import KvmError, KvmUnavailable
    from ..loader import ImageError

    try:
        manifest = load_manifest(args.manifest, input=args.input)
    except ManifestError as e:
        _err(str(e))
        return EXIT_USAGE
    if args.input is not None and not manifest.uses_input and manifest.host is None:
        _err(f"--input {args.input}: {args.manifest} takes no input "
             '(no block device with path = "{input}", no [host] program)')
        return EXIT_USAGE
    host_main = None
    if manifest.host is not None:
        from ..hostprog import HostProgramError, load_program
        try:
            host_main = load_program(manifest.host.program)
        except HostProgramError as e:
            _err(f"{args.manifest}: host.program: {e}")
            return EXIT_USAGE
    if args.timeout is not None and args.timeout <= 0:
        _err("--timeout must be > 0")
        return EXIT_USAGE
    captures = []
    from ..config import NetSpec
    lans = {d.lan for spec in manifest.domains for d in spec.devices if isinstance(d, NetSpec)}
    for item in args.capture:
        lan, sep, path = item.partition("=")
        if not sep or not path:
            _err(f"--capture {item}: expected LAN=FILE")
            return EXIT_USAGE
        if lan not in lans:
            _err(f"--capture {item}: no LAN {lan!r} in {args.manifest}")
            return EXIT_USAGE
        captures.append((lan, path))
    from ..hypervisor import Hypervisor
    try:
        hv = Hypervisor(timing=args.stats, kvm_path=args.kvm)
    except KvmUnavailable as e:
        _err(str(e))
        return EXIT_USAGE
    interrupted = timed_out = False
    host = None
    try:
        try:
            hv.create_from_manifest(manifest)
        except ImageError as e:
            _err(f"{args.manifest}: domain image: {e}")
            return EXIT_USAGE
        except (KvmError, OSError, ValueError, MemoryError, RuntimeError) as e:
            _err(f"{args.manifest}: cannot create domain: {e}")
            return EXIT_USAGE
        except KeyboardInterrupt:
            _err("interrupted while creating domains")
            return EXIT_INTERRUPTED
        for lan, path in captures:
            try:
                hv.lguest.capture(lan, path)
            except OSError as e:
                _err(f"--capture {lan}={path}: {e.strerror or e}")
                return EXIT_USAGE
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        try:
            # Ctrl-C is held while the vCPU threads start (they inherit the
            # mask, so it is never theirs) and taken right after.
            held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                if host_main is not None:
                    from ..hostprog import HostRun, HostThread
                    host = HostThread(host_main, HostRun(hv, manifest))
                hv.start_all()
                if host is not None:
                    host.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            timed_out = _wait(hv, host, deadline)
        except KeyboardInterrupt:
            interrupted = True
        if timed_out or interrupted:
            if host is not None:
                host.run.stopping.set()
            _stop_quietly(hv, "timeout" if timed_out else "interrupted")
            if host is not None:
                from ..hostprog import GRACE_S
                previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C
                try:
                    host.join(GRACE_S)
                finally:
                    signal.signal(signal.SIGINT, previous)
        host_status = _host_status(host)
        results = {name: d.result for name, d in hv.domains.items()}
        for name, res in results.items():
            if res is not None and res.how == "crashed":
                _err(f"domain {name} {res.describe()}")
        if args.stats:
            _print_stats(hv, t_process)
        if interrupted:
            _err("interrupted: all domains stopped")
            return EXIT_INTERRUPTED
        if timed_out:
            _err(f"timeout after {args.timeout} s: all domains stopped")
            return EXIT_TIMEOUT
        if host_status:
            return host_status
        for spec in manifest.domains:
            res = results.get(spec.name)
            if res is not None and res.exit_code != 0:
                return res.exit_code
        return 0
    finally:
        try:
            hv.close()
        except RuntimeError as e:
            _err(str(e))


def _wait(hv, host, deadline: float | None) -> bool:
    """Until every domain has stopped and the host program (if any) has
    returned; True if *deadline* passed first.  A host program that raises
    stops the domains; one still running GRACE_S after the domains stopped is
    abandoned."""
    from ..hostprog import GRACE_S
    stopped_at = None
    while True:
        now = time.monotonic()
        left = None if deadline is None else deadline - now
        if left is not None and left <= 0:
            return True
        step = 0.25 if left is None else min(0.25, left)
        if host is not None and host.error is not None and stopped_at is None:
            _stop_quietly(hv, "host program failed")
        if stopped_at is None:
            if hv.wait_all(step) is None:
                continue
            stopped_at = time.monotonic()
            if host is None:
                return False
            host.run.stopping.set()
        if host.join(step) or time.monotonic() - stopped_at > GRACE_S:
            return False


def _host_status(host) -> int:
    """The host program's exit status (reported on stderr when it failed)."""
    if host is None:
        return 0
    from ..hostprog import EXIT_HOST_FAILED, GRACE_S
    if not host.join(0):          # it had GRACE_S after run.stopping was set
        _err(f"host program did not return within {GRACE_S:g} s after the domains stopped")
        return EXIT_HOST_FAILED
    if host.error is not None:
        _err(f"host program {host.run.manifest.host.program} failed:\n{host.error}")
    return host.status or 0


def _stop_quietly(hv, reason: str) -> None:
    """Stop every domain and wait for them; a second Ctrl-C here is ignored
    (the domains are already stopping)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        hv.stop_all(reason)
        hv.wait_all(10)
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_stats(hv, t_process: int) -> None:
    out = sys.stderr
    for name, d in hv.domains.items():
        s = d.stats()
        out.write(f"stats {name}:\n")
        total = sum(s["exits"].values())
        out.write(f"  exits: {total}\n")
        for kind, count in sorted(s["exits"].items(), key=lambda kv: -kv[1]):
            us = s["exit_time_us"].get(kind, 0.0)
            per = us / count if count else 0.0
            out.write(f"    {kind:<15} {count:>10}  {us / 1e3:10.3f} ms in VMM  "
                      f"{per:8.2f} us/exit\n")
        for call, count in sorted(s["hypercalls"].items(), key=lambda kv: -kv[1]):
            out.write(f"    hypercall {call:<15} {count:>10}\n")
        for mark, ms in s["boot_ms"].items():
            out.write(f"  boot: domain create -> {mark}: {ms:.3f} ms\n")
        if d.console.first_output_ns is not None:
            out.write(f"  boot: process start -> first output: "
                      f"{(d.console.first_output_ns - t_process) / 1e6:.3f} ms\n")
    out.flush()


def _quiet_stdout_on_exit() -> None:
    """If stdout is a closed pipe (``paravm run ... | head -1``), make the
    interpreter's final flush quiet instead of printing a BrokenPipeError."""
    try:
        sys.stdout.flush()
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
