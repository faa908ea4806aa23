"""Shared test set-up.

* ``@pytest.mark.kvm``: the test needs a usable /dev/kvm.  Where it is missing
  or unusable the test is skipped with the reason
  (:class:`paravm.kvm.KvmUnavailable`'s one-line message).
* ``guests``: a session fixture that builds the guest SDK (``make -C guest``)
  and the test guests (``make -C tests/guests``) once, skipping when gcc or
  make is missing; it returns a :class:`Guests` with the ELF paths.
* ``hello_elf``: examples/hello/hello.elf (built by ``make setup``; rebuilt
  here with ``make -C examples`` if missing).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _image_cache_dir(tmp_path_factory):
    """Keep the image cache (paravm.loader.cache) of the whole run, child
    processes included, in a fresh directory instead of ~/.cache."""
    old = os.environ.get("PARAVM_CACHE_DIR")
    os.environ["PARAVM_CACHE_DIR"] = str(tmp_path_factory.mktemp("image-cache"))
    yield
    if old is None:
        os.environ.pop("PARAVM_CACHE_DIR", None)
    else:
        os.environ["PARAVM_CACHE_DIR"] = old
GUESTS_DIR = REPO / "tests" / "guests"
HELLO_ELF = REPO / "examples" / "hello" / "hello.elf"


@functools.cache
def kvm_unavailable_reason(path: str = "/dev/kvm") -> str | None:
    """``None`` if paravm can use *path*, else why not (one line)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"{path}: cannot open: {e.strerror}"
    os.close(fd)
    # A broken tree must fail, not skip: no guard around these imports.
    from paravm.kvm import KvmUnavailable
    from paravm.vm.kvm_backend import open_kvm
    try:
        kvm = open_kvm(path)
    except KvmUnavailable as e:
        return str(e)
    except OSError as e:
        return f"{path}: {e}"
    kvm.close()
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kvm") is not None:
        reason = kvm_unavailable_reason()
        if reason is not None:
            pytest.skip(f"needs /dev/kvm: {reason}")


def _make(directory: Path, what: str) -> None:
    if shutil.which("make") is None:
        pytest.skip(f"cannot build {what}: make is not installed")
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        pytest.skip(f"cannot build {what}: {cc} is not installed")
    proc = subprocess.run(["make", "-s", "-C", str(directory)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"building {what} failed (make -C {directory}, exit {proc.returncode}):\n"
                    f"{proc.stdout}{proc.stderr}", pytrace=False)


@dataclass(frozen=True)
class Guests:
    good: Path      # good [STATUS [TICKS]]
    hostile: Path   # hostile MODE (see tests/guests/hostile.c)
    triple: Path    # raw ELF without the SDK: ud2 triple-faults


@pytest.fixture
def machine():
    """A MachineMemory, closed after the test."""
    from paravm.memory import MachineMemory
    m = MachineMemory()
    yield m
    m.close()


@pytest.fixture(scope="session")
def guests() -> Guests:
    """The test guests, built once per session (after the guest SDK)."""
    _make(REPO / "guest", "the guest SDK")
    _make(GUESTS_DIR, "the test guests")
    g = Guests(GUESTS_DIR / "good.elf", GUESTS_DIR / "hostile.elf", GUESTS_DIR / "triple.elf")
    for p in (g.good, g.hostile, g.triple):
        assert p.is_file(), f"{p} was not built"
    return g


@pytest.fixture(scope="session")
def test_guests(guests) -> Path:
    """The directory of the built test guests (tests/guests/NAME.elf)."""
    return GUESTS_DIR


@pytest.fixture(scope="session")
def hello_elf() -> Path:
    """examples/hello/hello.elf (built by `make setup`)."""
    if not HELLO_ELF.is_file():
        _make(REPO / "guest", "the guest SDK")
        _make(REPO / "examples", "the examples")
    assert HELLO_ELF.is_file(), f"{HELLO_ELF} was not built"
    return HELLO_ELF
