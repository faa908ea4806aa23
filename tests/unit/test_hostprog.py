"""paravm.hostprog without KVM: loading a host program, its exit status, progress lines, printing.

The hypervisor is a fake with the two attributes `HostRun` uses: ``output`` (the console
sink, ``fn(name, line)``) and ``domains`` (name -> object with ``result``).
"""

from __future__ import annotations

import io
import sys
import threading
import types
from pathlib import Path

import pytest

from paravm import hostprog
from paravm.hostprog import (EXIT_HOST_FAILED, HostProgramError, HostRun, HostThread, Progress,
                             load_program)


class FakeHv:
    def __init__(self, output="record", domains=None):
        self.lines: list[tuple[str, str]] = []
        self.output = self._record if output == "record" else output
        self.domains = domains if domains is not None else {}

    def _record(self, name: str, line: str) -> None:
        self.lines.append((name, line))


def make_run(hv=None, *, input=None, terminal=False) -> HostRun:
    manifest = types.SimpleNamespace(input=input, host=None)
    return HostRun(hv if hv is not None else FakeHv(), manifest, terminal=terminal)


class Clock:
    """A stand-in for the module's ``time``: monotonic() returns `now`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(hostprog, "time", c)   # only hostprog's clock; threading keeps its own
    return c


def write(tmp_path: Path, text: str, name: str = "host.py") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def run_main(main, run=None) -> HostThread:
    t = HostThread(main, run if run is not None else make_run())
    t.start()
    assert t.join(10), "host thread did not finish"
    return t


# -------------------------------------------------------------------------------- load_program


def test_load_program_returns_its_main(tmp_path):
    p = write(tmp_path, "X = 41\n\ndef main(run):\n    return X + run\n")
    main = load_program(p)
    assert main(1) == 42
    assert main.__name__ == "main"


def test_load_program_accepts_a_str_and_a_dashed_file_name(tmp_path):
    p = write(tmp_path, "def main(run):\n    return 'ok'\n", name="my-host.py")
    assert load_program(str(p))(None) == "ok"


def test_each_load_runs_the_file_afresh(tmp_path):
    p = write(tmp_path, "def main(run):\n    return 1\n")
    assert load_program(p)(None) == 1
    p.write_text("def main(run):\n    return 2\n")
    assert load_program(p)(None) == 2


def test_syntax_error_names_file_and_line(tmp_path):
    p = write(tmp_path, "def main(run):\n    return 0\n\nx = (\n")
    with pytest.raises(HostProgramError) as e:
        load_program(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:4: "), msg
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_exception_at_import_gives_its_traceback(tmp_path):
    p = write(tmp_path, "import os\n\ndef helper():\n    raise ValueError('no config here')\n\n"
                        "helper()\n\ndef main(run):\n    return 0\n")
    with pytest.raises(HostProgramError) as e:
        load_program(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: import failed:\n")
    assert "Traceback (most recent call last):" in msg
    assert f'File "{p}", line 6' in msg and f'File "{p}", line 4, in helper' in msg
    assert msg.endswith("ValueError: no config here")


def test_system_exit_at_import_is_a_load_error_not_an_exit(tmp_path):
    p = write(tmp_path, "import sys\nsys.exit(3)\n")
    with pytest.raises(HostProgramError, match="import failed"):
        load_program(p)


def test_import_error_at_import_is_reported(tmp_path):
    p = write(tmp_path, "import paravm_no_such_module\n")
    with pytest.raises(HostProgramError, match=r"ModuleNotFoundError: No module named "
                                                r"'paravm_no_such_module'"):
        load_program(p)


@pytest.mark.parametrize("text", [
    pytest.param("def other(run):\n    return 0\n", id="no-main"),
    pytest.param("main = 3\n", id="main-not-callable"),
    pytest.param("", id="empty-file"),
])
def test_program_without_callable_main_is_refused(tmp_path, text):
    p = write(tmp_path, text)
    with pytest.raises(HostProgramError) as e:
        load_program(p)
    assert str(e.value) == f"{p}: no main(run) function"


def test_missing_file_is_refused(tmp_path):
    p = tmp_path / "gone.py"
    with pytest.raises(HostProgramError) as e:
        load_program(p)
    assert str(e.value).startswith(f"{p}: ")
    assert "No such file" in str(e.value)


def test_directory_is_refused(tmp_path):
    with pytest.raises(HostProgramError) as e:
        load_program(tmp_path)
    assert str(e.value).startswith(f"{tmp_path}: ")


def test_oserror_raised_by_the_program_at_import_gives_its_traceback(tmp_path):
    p = write(tmp_path, "open('/nonexistent/paravm-config.json')\n\ndef main(run):\n    return 0\n")
    with pytest.raises(HostProgramError) as e:
        load_program(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: import failed:\n") and "Traceback" in msg, msg
    assert "/nonexistent/paravm-config.json" in msg


def test_syntax_error_raised_by_the_program_at_import_is_not_blamed_on_its_file(tmp_path):
    p = write(tmp_path, "\n\nTABLE = compile('x = (', 'table.py', 'exec')\n\n"
                        "def main(run):\n    return 0\n")
    with pytest.raises(HostProgramError) as e:
        load_program(p)
    msg = str(e.value)
    assert not msg.startswith(f"{p}:1:"), msg    # line 1 is table.py's, not host.py's
    assert "table.py" in msg and "Traceback" in msg


def test_program_may_define_a_dataclass_with_postponed_annotations(tmp_path):
    p = write(tmp_path, "from __future__ import annotations\nimport dataclasses\n\n"
                        "@dataclasses.dataclass\nclass R:\n    n: int\n\n"
                        "def main(run):\n    return R(7).n\n")
    assert load_program(p)(None) == 7


# ------------------------------------------------------------------------------ HostThread


@pytest.mark.parametrize("result, status", [
    (None, 0), (0, 0), (3, 3), (255, 255), (256, 1), (512, 1), (257, 1), (-1, 255), (70, 70),
])
def test_exit_status_from_main(result, status):
    t = run_main(lambda run: result)
    assert (t.status, t.error) == (status, None)


@pytest.mark.parametrize("result", [True, False, "x", 1.0, [0]])
def test_main_returning_a_non_int_fails(result):
    t = run_main(lambda run: result)
    assert t.status == EXIT_HOST_FAILED == 70
    assert t.error == f"main() returned {result!r}, not an int exit status"


def test_main_raising_fails_with_its_traceback(tmp_path):
    main = load_program(write(tmp_path, "def check(run):\n    raise RuntimeError('bad page')\n\n"
                                        "def main(run):\n    check(run)\n"))
    t = run_main(main)
    assert t.status == EXIT_HOST_FAILED
    assert t.error.startswith("Traceback (most recent call last):")
    assert "in check" in t.error and t.error.endswith("RuntimeError: bad page")


def test_main_calling_sys_exit_is_a_failure_not_an_exit():
    t = run_main(lambda run: sys.exit(0))
    assert t.status == EXIT_HOST_FAILED and "SystemExit" in t.error


def test_main_gets_the_run_on_a_daemon_thread_named_host():
    seen = {}

    def main(run):
        seen["run"], seen["thread"] = run, threading.current_thread()
        return 0

    run = make_run()
    assert run_main(main, run).status == 0
    assert seen["run"] is run
    assert seen["thread"].name == "host" and seen["thread"].daemon


def test_join_times_out_while_main_runs():
    release = threading.Event()
    t = HostThread(lambda run: release.wait(10) and 5, make_run())
    t.start()
    try:
        assert t.join(0.01) is False
        assert t.status is None
    finally:
        release.set()
    assert t.join(10) is True and t.status == 5


# ----------------------------------------------------------------------------------- HostRun


def test_host_run_attributes():
    a, b = types.SimpleNamespace(result=None), types.SimpleNamespace(result="done")
    hv = FakeHv(domains={"a": a, "b": b})
    run = make_run(hv, input=Path("/x/in.bin"))
    assert run.hv is hv and run.input == Path("/x/in.bin")
    assert isinstance(run.stopping, threading.Event) and not run.stopping.is_set()
    assert run.domain("a") is a
    with pytest.raises(KeyError):
        run.domain("c")
    assert run.domains_running() is True
    a.result = "done"
    assert run.domains_running() is False


def test_print_goes_to_the_output_sink_as_host():
    hv = FakeHv()
    make_run(hv).print("hello there")
    assert hv.lines == [("host", "hello there")]


def test_print_to_a_sink_raising_oserror_is_silent():
    calls = []

    def broken(name, line):
        calls.append(line)
        raise BrokenPipeError(32, "Broken pipe")

    make_run(FakeHv(output=broken)).print("x")   # does not raise
    assert calls == ["x"]


def test_print_with_no_output_does_nothing():
    run = make_run(FakeHv(output=None))
    run.print("x")   # nothing to call, nothing raised


class TtyStringIO(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stdout_cls, terminal", [(io.StringIO, False), (TtyStringIO, True)])
def test_terminal_defaults_to_stdout_isatty(monkeypatch, rich_console, stdout_cls, terminal):
    monkeypatch.setattr(sys, "stdout", stdout_cls())
    run = HostRun(FakeHv(), types.SimpleNamespace(input=None))
    with run.progress(10) as p:
        assert (p._rich is not None) is terminal


# ------------------------------------------------------------------------- Progress (plain)


def test_plain_progress_prints_at_most_once_per_interval(clock, monkeypatch):
    monkeypatch.setattr(hostprog, "PLAIN_PROGRESS_S", 1.0)
    hv = FakeHv()
    p = make_run(hv).progress(total=10_000_000, label="streamed")
    assert isinstance(p, Progress) and p.total == 10_000_000

    p.update(1_000_000)                 # t0 + 0: too early
    clock.now += 0.5
    p.update(2_000_000)                 # still within the first interval
    assert hv.lines == []

    clock.now = 1000.0 + 2.0            # 2 s after the progress was made
    p.update(4_000_000)
    assert hv.lines == [("host", "streamed: 4000000 bytes, 2.0 MB/s")]

    clock.now += 0.9
    p.update(5_000_000)                 # 0.9 s after the last line: none
    assert len(hv.lines) == 1
    clock.now += 0.2
    p.update(6_200_000)                 # 1.1 s after it, 3.1 s from the start
    assert hv.lines[1:] == [("host", "streamed: 6200000 bytes, 2.0 MB/s")]
    p.close()


def test_plain_progress_interval_is_the_module_setting(clock, monkeypatch):
    monkeypatch.setattr(hostprog, "PLAIN_PROGRESS_S", 0.0)
    hv = FakeHv()
    p = make_run(hv).progress(label="copied")
    clock.now += 0.5
    p.update(500_000)
    clock.now += 0.5
    p.update(3_000_000)
    assert hv.lines == [("host", "copied: 500000 bytes, 1.0 MB/s"),
                        ("host", "copied: 3000000 bytes, 3.0 MB/s")]


def test_update_is_absolute_not_an_increment(clock, monkeypatch):
    monkeypatch.setattr(hostprog, "PLAIN_PROGRESS_S", 0.0)
    hv = FakeHv()
    p = make_run(hv).progress()
    for n in (100, 100, 250):
        clock.now += 1
        p.update(n)
    assert p.done == 250
    assert [line for _, line in hv.lines] == ["streamed: 100 bytes, 0.0 MB/s",
                                              "streamed: 100 bytes, 0.0 MB/s",
                                              "streamed: 250 bytes, 0.0 MB/s"]


def test_mb_per_s_is_bytes_per_microsecond_since_start(clock):
    p = make_run().progress()
    assert p.mb_per_s() == 0.0          # no time has passed: no division by zero
    p.update(3_000_000)
    clock.now += 1.5
    assert p.mb_per_s() == pytest.approx(2.0)


def test_plain_progress_as_context_manager(clock):
    hv = FakeHv()
    with make_run(hv).progress(label="x") as p:
        clock.now += 5
        p.update(7)
    assert hv.lines == [("host", "x: 7 bytes, 0.0 MB/s")]


# ---------------------------------------------------------------------- Progress (terminal)


@pytest.fixture
def rich_console(monkeypatch):
    """rich's global console, writing to a StringIO as if it were a terminal."""
    import rich
    from rich.console import Console
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(rich, "_console", console)
    return out


def test_terminal_progress_draws_with_rich_and_prints_no_plain_lines(rich_console, clock,
                                                                     monkeypatch):
    monkeypatch.setattr(hostprog, "PLAIN_PROGRESS_S", 0.0)
    hv = FakeHv()
    stdout = sys.stdout
    p = make_run(hv, terminal=True).progress(total=4096, label="streamed")
    try:
        assert p._rich is not None
        clock.now += 10
        p.update(1024)
        p.update(4096)
        assert p.done == 4096
        task = p._rich.tasks[0]
        assert (task.description, task.total, task.completed) == ("streamed", 4096, 4096)
    finally:
        p.close()
    assert hv.lines == []                       # no "host| streamed: N bytes" lines
    assert "host| streamed" in rich_console.getvalue()
    assert sys.stdout is stdout                 # the redirect ends with the live line
    p.close()                                   # a second close is harmless


def test_terminal_progress_keeps_domain_lines_above_it(rich_console):
    from paravm.vm.console import stdout_sink
    with make_run(FakeHv(), terminal=True).progress(total=None, label="streamed"):
        stdout_sink("alice", "a line while the bar is live")
    assert "alice| a line while the bar is live" in rich_console.getvalue()


def test_terminal_progress_context_manager_stops_rich(rich_console):
    with make_run(FakeHv(), terminal=True).progress(total=10) as p:
        rich = p._rich
        assert rich.live.is_started
    assert p._rich is None and not rich.live.is_started
