"""The console: control characters escaped, a closed stdout does not hang the run."""

import subprocess
import sys
from pathlib import Path

import pytest

import paravm
from paravm.vm.console import Console, sanitize

REPO = Path(__file__).resolve().parents[2]


def test_control_characters_are_escaped_so_a_guest_cannot_spoof_a_prefix():
    assert sanitize("a\rbob| hi\x1b]0;x\x07") == "a\\x0dbob| hi\\x1b]0;x\\x07"
    assert sanitize("tab\tstays, é stays") == "tab\tstays, é stays"
    assert sanitize("\x85\x9f\x7f") == "\\x85\\x9f\\x7f"


def test_a_failing_sink_is_dropped_and_capture_goes_on():
    calls = []

    def sink(name, line):
        calls.append(line)
        raise BrokenPipeError(32, "Broken pipe")

    c = Console("d", sink)
    c.write(b"one\ntwo\n")
    c.write(b"three\n")
    c.flush()
    assert calls == ["one"]                 # dropped after the first failure
    assert c.text == "one\ntwo\nthree\n"


def test_lines_are_split_joined_and_flushed():
    lines = []
    c = Console("d", lambda n, l: lines.append((n, l)))
    c.write(b"par")
    c.write(b"tial\r\nnext")
    assert lines == [("d", "partial")]
    c.flush()
    assert lines == [("d", "partial"), ("d", "next")]


@pytest.mark.kvm
def test_paravm_run_into_a_closed_pipe_finishes(hello_elf, tmp_path):
    m = tmp_path / "m.toml"
    m.write_text(f'[[domain]]\nname = "a"\nimage = "{hello_elf}"\nvcpus = 2\n\n'
                 f'[[domain]]\nname = "b"\nimage = "{hello_elf}"\nvcpus = 2\n')
    # `paravm run m.toml | head -c 1`: the reader goes away after one byte
    p = subprocess.Popen([sys.executable, "-m", "paravm", "run", str(m)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(1)
    p.stdout.close()
    try:
        rc = p.wait(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    err = p.stderr.read().decode()
    assert rc == 0, err
    assert "Traceback" not in err and "Exception" not in err
