"""``paravm run`` with a manifest's ``[host] program`` and ``--input``, in process.

Each test writes a manifest and a host program to tmp_path and calls
``paravm.cli.main.main([...])``; stdout (the ``name| line`` console lines) and
stderr (``paravm: ...``) are taken with capsys. A host program reports what it
saw through the module ``paravm_test_hook`` that the `hook` fixture puts in
sys.modules, and waits, where it must outlive a run, on ``hook.release``, which
the fixture sets at teardown so that no thread is left behind.
"""

from __future__ import annotations

import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest

from paravm import hostprog
from paravm.cli.main import main as paravm_main

pytestmark = [
    pytest.mark.kvm,
    # an exception escaping the host thread (or any other) fails the test
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]


@pytest.fixture
def hook(monkeypatch):
    mod = types.ModuleType("paravm_test_hook")
    mod.release = threading.Event()
    mod.seen = {}
    monkeypatch.setitem(sys.modules, "paravm_test_hook", mod)
    yield mod
    mod.release.set()


def manifest(tmp_path: Path, domains, host: str | None = None, extra: str = "") -> Path:
    """A manifest with *domains* ((name, image, args, devices-TOML) tuples) and, when
    *host* is the source of a host program, a ``[host]`` table naming it."""
    text = ""
    if host is not None:
        (tmp_path / "host.py").write_text(textwrap.dedent(host))
        text += '[host]\nprogram = "host.py"\n\n'
    for name, image, args, devices in domains:
        text += (f'[[domain]]\nname = "{name}"\nimage = "{image}"\nmemory = 16\n'
                 f'args = [{", ".join(repr(a) for a in args)}]\n\n{devices}')
    text += extra
    m = tmp_path / "m.toml"
    m.write_text(text)
    return m


def paravm(capsys, *args) -> tuple[int, str, str, float]:
    """Exit status, stdout, stderr and seconds taken of ``paravm ARGS``."""
    t0 = time.monotonic()
    rc = paravm_main([str(a) for a in args])
    dt = time.monotonic() - t0
    out, err = capsys.readouterr()
    return rc, out, err, dt


def hello(hello_elf, name: str = "alice", status: int = 0, devices: str = ""):
    return (name, hello_elf, [str(status)], devices)


def forever(guests, name: str = "busy"):
    return (name, guests.hostile, ["forever"], "")


# ---------------------------------------------------------------------------- exit status


def test_host_program_prints_beside_the_domains_and_exits_0(tmp_path, capsys, hook, hello_elf):
    m = manifest(tmp_path, [hello(hello_elf, "alice"), hello(hello_elf, "bob")], host="""
        import paravm_test_hook as hook

        def main(run):
            hook.seen["domains"] = sorted(run.hv.domains)
            hook.seen["input"] = run.input
            run.print("hello from the host")
            run.print(f"domains {' '.join(sorted(run.hv.domains))}")
    """)
    rc, out, err, _ = paravm(capsys, "run", m)
    assert rc == 0, err
    assert err == ""
    lines = out.splitlines()
    assert "host| hello from the host" in lines and "host| domains alice bob" in lines
    assert "alice| alice exits with status 0" in lines and "bob| bob exits with status 0" in lines
    assert hook.seen == {"domains": ["alice", "bob"], "input": None}


@pytest.mark.parametrize("host_returns, domain_status, expected", [
    pytest.param("3", 0, 3, id="host-3-domains-0"),
    pytest.param("0", 5, 5, id="host-0-domain-5"),
    pytest.param("None", 5, 5, id="host-None-domain-5"),
    pytest.param("3", 5, 3, id="host-3-wins-over-domain-5"),
    pytest.param("256", 0, 1, id="host-256-is-1"),
])
def test_exit_status_is_the_host_programs_if_not_0_else_the_domains(
        tmp_path, capsys, hook, hello_elf, host_returns, domain_status, expected):
    m = manifest(tmp_path, [hello(hello_elf, "alice"), hello(hello_elf, "bob", domain_status)],
                 host=f"def main(run):\n    return {host_returns}\n")
    rc, out, err, _ = paravm(capsys, "run", m)
    assert rc == expected, err
    assert f"bob| bob exits with status {domain_status}" in out.splitlines()


# ---------------------------------------------------------------------- a failing program


@pytest.mark.parametrize("when", ["while-domains-run", "after-domains-exited"])
def test_host_program_raising_stops_the_domains_with_70(tmp_path, capsys, hook, hello_elf,
                                                        guests, when):
    # while-domains-run: the domain never exits; the failure must stop it.
    d = forever(guests, "alice") if when == "while-domains-run" else hello(hello_elf, "alice")
    m = manifest(tmp_path, [d], host=f"""
        import paravm_test_hook as hook

        def check(run):
            raise RuntimeError("the result page is wrong")

        def main(run):
            hook.seen["domain"] = run.domain("alice")
            if {when == "after-domains-exited"}:
                run.stopping.wait()
            check(run)
    """)
    rc, out, err, dt = paravm(capsys, "run", m)
    assert rc == 70
    prog = (tmp_path / "host.py").resolve()
    assert f"paravm: host program {prog} failed:\nTraceback (most recent call last):\n" in err
    assert ", in check\n" in err
    assert err.rstrip().endswith("RuntimeError: the result page is wrong")
    assert "crashed" not in err
    result = hook.seen["domain"].result
    assert result is not None, "the domain was not stopped"
    if when == "while-domains-run":
        assert result.how == "stopped"
        assert dt < 5, f"took {dt:.1f} s to stop the domains"
    else:
        assert (result.how, result.status) == ("exited", 0)


def test_host_program_returning_a_non_int_is_70(tmp_path, capsys, hook, hello_elf):
    m = manifest(tmp_path, [hello(hello_elf)], host="def main(run):\n    return 'done'\n")
    rc, out, err, _ = paravm(capsys, "run", m)
    assert rc == 70
    assert "main() returned 'done', not an int exit status" in err


# ------------------------------------------------------------------ stopping and the grace


def test_program_waiting_on_stopping_returns_after_the_domains_stop(tmp_path, capsys, hook,
                                                                    hello_elf):
    m = manifest(tmp_path, [hello(hello_elf, "alice"), hello(hello_elf, "bob")], host="""
        import paravm_test_hook as hook

        def main(run):
            while not run.stopping.wait(0.01):
                pass
            hook.seen["running at stop"] = run.domains_running()
            hook.seen["results"] = {n: d.result.how for n, d in run.hv.domains.items()}
            run.print("stopping seen")
            return 0
    """)
    rc, out, err, dt = paravm(capsys, "run", m)
    assert rc == 0, err
    assert hook.seen == {"running at stop": False,
                         "results": {"alice": "exited", "bob": "exited"}}
    assert out.splitlines()[-1] == "host| stopping seen"
    assert dt < 5


IGNORES_STOPPING = """
    import paravm_test_hook as hook
    import time

    def main(run):
        while not hook.release.is_set():
            if run.stopping.is_set() and "stopping" not in hook.seen:
                hook.seen["stopping"] = time.monotonic()
            time.sleep(0.005)
        return 0
"""


def test_program_ignoring_stopping_is_abandoned_with_70(tmp_path, capsys, hook, hello_elf,
                                                        monkeypatch):
    monkeypatch.setattr(hostprog, "GRACE_S", 0.3)
    m = manifest(tmp_path, [hello(hello_elf)], host=IGNORES_STOPPING)
    rc, out, err, dt = paravm(capsys, "run", m)
    assert rc == 70
    assert ("paravm: host program did not return within 0.3 s after the domains stopped"
            in err.splitlines())
    assert "stopping" in hook.seen, "run.stopping was never set"
    assert dt < 5


def test_program_ignoring_stopping_is_abandoned_after_grace_s(tmp_path, capsys, hook, hello_elf,
                                                              monkeypatch):
    monkeypatch.setattr(hostprog, "GRACE_S", 0.5)
    m = manifest(tmp_path, [hello(hello_elf)], host=IGNORES_STOPPING)
    rc, out, err, _ = paravm(capsys, "run", m)
    abandoned = time.monotonic()
    assert rc == 70
    # The loop that notices the deadline ticks every 0.25 s: allow one tick and some slack.
    assert abandoned - hook.seen["stopping"] < 0.5 + 0.25 + 0.2


def test_timeout_sets_stopping_and_exits_124(tmp_path, capsys, hook, guests):
    m = manifest(tmp_path, [forever(guests)], host="""
        import paravm_test_hook as hook

        def main(run):
            run.stopping.wait()
            hook.seen["stopped"] = True
            return 3    # not the run's status: the timeout's is
    """)
    rc, out, err, dt = paravm(capsys, "run", m, "--timeout", "0.3")
    assert rc == 124
    assert err.splitlines()[-1] == "paravm: timeout after 0.3 s: all domains stopped"
    assert hook.seen == {"stopped": True}
    assert 0.3 <= dt < 5


# --------------------------------------------------------------------------------- --input


def test_run_input_is_the_resolved_input_file(tmp_path, capsys, hook, hello_elf, monkeypatch):
    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 1000)
    monkeypatch.chdir(tmp_path)
    m = manifest(tmp_path, [hello(hello_elf, devices='[[domain.device]]\ntype = "block"\n'
                                                     'path = "{input}"\nreadonly = true\n')],
                 host="""
        import paravm_test_hook as hook

        def main(run):
            hook.seen["input"] = run.input
            hook.seen["size"] = run.input.stat().st_size
            hook.seen["uses_input"] = run.manifest.uses_input
    """)
    rc, out, err, _ = paravm(capsys, "run", m, "--input", "data.bin")
    assert rc == 0, err
    assert hook.seen == {"input": data.resolve(), "size": 1000, "uses_input": True}
    assert hook.seen["input"].is_absolute()


def test_input_to_a_host_program_without_placeholder(tmp_path, capsys, hook, hello_elf):
    data = tmp_path / "data.bin"
    data.write_bytes(b"abc")
    m = manifest(tmp_path, [hello(hello_elf)], host="""
        import paravm_test_hook as hook

        def main(run):
            hook.seen["input"] = run.input.read_bytes()
    """)
    rc, out, err, _ = paravm(capsys, "run", m, "--input", data)
    assert rc == 0, err
    assert hook.seen == {"input": b"abc"}


def test_input_to_a_manifest_that_takes_none_is_refused(tmp_path, capsys, hello_elf):
    data = tmp_path / "data.bin"
    data.write_bytes(b"abc")
    m = manifest(tmp_path, [hello(hello_elf)])
    rc, out, err, _ = paravm(capsys, "run", m, "--input", data)
    assert rc == 2
    assert out == ""
    assert err == (f'paravm: --input {data}: {m} takes no input (no block device with path = '
                   '"{input}", no [host] program)\n')


def test_missing_input_is_refused_before_the_run(tmp_path, capsys, hook, hello_elf):
    m = manifest(tmp_path, [hello(hello_elf)], host="def main(run):\n    return 0\n")
    rc, out, err, _ = paravm(capsys, "run", m, "--input", tmp_path / "nope.bin")
    assert rc == 2
    assert out == ""
    assert err == f"paravm: {m}: --input: file not found: {tmp_path / 'nope.bin'}\n"


def test_placeholder_without_input_is_refused(tmp_path, capsys, hello_elf):
    m = manifest(tmp_path, [hello(hello_elf, devices='[[domain.device]]\ntype = "block"\n'
                                                     'path = "{input}"\n')])
    rc, out, err, _ = paravm(capsys, "run", m)
    assert rc == 2 and out == ""
    assert err.startswith(f"paravm: {m}: domain[0].device[0].path: {{input}} stands for")


# ---------------------------------------------------------------- a program that won't load


@pytest.fixture
def no_hypervisor(monkeypatch):
    """Make creating a Hypervisor fail the test: the CLI must refuse before it."""
    import paravm.hypervisor

    def refuse(*a, **kw):
        raise AssertionError("a Hypervisor was created")
    monkeypatch.setattr(paravm.hypervisor, "Hypervisor", refuse)


@pytest.mark.parametrize("source, reason", [
    pytest.param("def main(run):\n    return (\n", "{prog}:2: ", id="syntax-error"),
    pytest.param("raise RuntimeError('no device')\n", "{prog}: import failed:\nTraceback",
                 id="raises-at-import"),
    pytest.param("def mian(run):\n    pass\n", "{prog}: no main(run) function", id="no-main"),
])
def test_host_program_that_does_not_load_is_a_usage_error(tmp_path, capsys, hello_elf,
                                                          no_hypervisor, source, reason):
    m = manifest(tmp_path, [hello(hello_elf)], host=source)
    rc, out, err, _ = paravm(capsys, "run", m)
    prog = (tmp_path / "host.py").resolve()
    assert rc == 2
    assert out == ""
    assert err.startswith(f"paravm: {m}: host.program: " + reason.format(prog=prog)), err


def test_missing_host_program_is_a_manifest_error(tmp_path, capsys, hello_elf, no_hypervisor):
    m = manifest(tmp_path, [hello(hello_elf)], extra='[host]\nprogram = "gone.py"\n')
    rc, out, err, _ = paravm(capsys, "run", m)
    assert rc == 2 and out == ""
    assert err == f"paravm: {m}: host.program: file not found: {tmp_path / 'gone.py'}\n"
