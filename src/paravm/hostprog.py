"""Host programs: Python code a manifest runs as domain 0 beside its guests.

A manifest's ``[host] program = "host.py"`` names a Python file. ``paravm run``
loads it before any domain is created (a syntax error or a missing ``main`` is
a usage error, exit status 2), starts the domains, then calls
``main(run)`` on a thread of its own with a `HostRun`. ``main`` returns the
program's exit status (``None`` counts as 0); the run's exit status is the
program's when that is not 0, else the domains' (docs/manifest.md). An
exception in the program is reported with its traceback, every domain is
stopped, and the status is 70 (as for a crashed domain).

The program talks to the guests through the hypervisor's host APIs
(``run.hv.ivc``, ``run.hv.evtchn``, ``Gntdev(run.hv.grant)``,
``run.hv.xenstore``, ...). It must return once ``run.stopping`` is set: that
happens when every domain has stopped, on ``--timeout`` and on Ctrl-C; a
program still running `GRACE_S` seconds later is abandoned (exit status 70).
"""

from __future__ import annotations

import pathlib
import sys
import threading
import time
import traceback
import types
from typing import Any, Callable

GRACE_S = 5.0             # how long a program may run on after run.stopping is set
EXIT_HOST_FAILED = 70     # as a crashed domain (EX_SOFTWARE)
PLAIN_PROGRESS_S = 1.0    # seconds between progress lines when stdout is not a terminal


class HostProgramError(Exception):
    """The program cannot be loaded: the reason (with the traceback of an
    exception raised while importing it)."""


def load_program(path: str | pathlib.Path) -> Callable[["HostRun"], Any]:
    """Import the host program at *path* and return its ``main``.

    Raises `HostProgramError` if the file cannot be read, does not compile,
    raises while it is imported, or has no callable ``main``."""
    path = pathlib.Path(path)
    name = f"paravm_host_{path.stem.replace('-', '_')}"
    try:
        source = path.read_bytes()
    except OSError as e:
        raise HostProgramError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as e:
        raise HostProgramError(f"{path}:{e.lineno}: {e.msg}") from None
    except ValueError as e:        # NUL bytes in the source
        raise HostProgramError(f"{path}: {e}") from None
    module = types.ModuleType(name)
    module.__file__ = str(path)
    # Registered while it runs, as importlib does: dataclasses and pickling
    # look the module up by name.
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException as e:  # noqa: BLE001 - anything its code raises, KeyboardInterrupt too
        sys.modules.pop(name, None)
        raise HostProgramError(f"{path}: import failed:\n{_format(e)}") from None
    main = getattr(module, "main", None)
    if not callable(main):
        raise HostProgramError(f"{path}: no main(run) function")
    return main


def _format(e: BaseException) -> str:
    return "".join(traceback.format_exception(e)).rstrip()


class Progress:
    """Bytes done out of *total*, shown while a host program runs.

    On a terminal: one live line (bytes streamed, MB/s, a bar when *total* is
    known) drawn with rich, kept under the console lines of the domains.
    Elsewhere: a plain ``host| <label>: N bytes, X MB/s`` line at most every
    `PLAIN_PROGRESS_S` seconds. MB/s are 10^6 bytes per second since the
    progress was made. Thread safe; `close` (or leaving the ``with``) removes
    the live line.
    """

    def __init__(self, run: "HostRun", total: int | None, label: str, terminal: bool) -> None:
        self._run, self.total, self.label = run, total, label
        self._t0 = time.monotonic()
        self._last_line = self._t0
        self._lock = threading.Lock()
        self._rich = self._task = None
        self._closed = False
        self.done = 0
        if terminal:
            from rich.progress import (BarColumn, DownloadColumn, Progress as RichProgress,
                                       TextColumn, TimeElapsedColumn, TransferSpeedColumn)
            self._rich = RichProgress(TextColumn("host| {task.description}"), BarColumn(),
                                      DownloadColumn(), TransferSpeedColumn(),
                                      TimeElapsedColumn(), transient=True,
                                      redirect_stdout=True, redirect_stderr=True)
            self._task = self._rich.add_task(label, total=total)
            self._rich.start()

    def mb_per_s(self) -> float:
        """Bytes done per microsecond (= MB/s) since the progress was made."""
        dt = time.monotonic() - self._t0
        return self.done / dt / 1e6 if dt > 0 else 0.0

    def update(self, done: int) -> None:
        """*done* bytes so far (absolute, not an increment)."""
        with self._lock:
            self.done = done
            if self._closed:
                return
            if self._rich is not None:
                self._rich.update(self._task, completed=done)
                return
            now = time.monotonic()
            if now - self._last_line < PLAIN_PROGRESS_S:
                return
            self._last_line = now
        self._run.print(f"{self.label}: {done} bytes, {self.mb_per_s():.1f} MB/s")

    def close(self) -> None:
        with self._lock:
            rich, self._rich = self._rich, None
            self._closed = True
        if rich is not None:
            rich.stop()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class HostRun:
    """What a host program's ``main(run)`` gets.

    Attributes:
        hv: the `paravm.Hypervisor` running the manifest's domains (started).
        manifest: the checked `paravm.config.Manifest`.
        input: the ``--input`` file (absolute `pathlib.Path`), or None.
        started: `time.monotonic` when the run was made (just before the
            domains are started).
        stopping: a `threading.Event`, set when every domain has stopped, on
            ``--timeout`` and on Ctrl-C: the program must return soon after.
    """

    def __init__(self, hv, manifest, *, terminal: bool | None = None) -> None:
        self.hv, self.manifest, self.input = hv, manifest, manifest.input
        self.stopping = threading.Event()
        self.started = time.monotonic()
        self._terminal = sys.stdout.isatty() if terminal is None else terminal

    def print(self, line: str) -> None:
        """``host| line`` through the hypervisor's console output (where the
        domains' lines go), control characters escaped as the domains' are
        (a line may quote what a guest wrote)."""
        sink = self.hv.output
        if sink is not None:
            from .vm.console import sanitize
            try:
                sink("host", sanitize(line))
            except OSError:
                pass

    def progress(self, total: int | None = None, label: str = "streamed") -> Progress:
        """A `Progress` for *total* bytes (None: unknown)."""
        return Progress(self, total, label, self._terminal)

    def domain(self, name: str):
        """The `paravm.vm.Domain` called *name* (KeyError if none)."""
        return self.hv.domains[name]

    def domains_running(self) -> bool:
        """Whether any domain has not stopped yet."""
        return any(d.result is None for d in self.hv.domains.values())


class HostThread:
    """Runs ``main(run)`` on a daemon thread named ``host``; `status` is its
    exit status once it has returned (`join` true), `error` the traceback
    text if it raised or returned something that is not an int."""

    def __init__(self, main: Callable[[HostRun], Any], run: HostRun) -> None:
        self.main, self.run = main, run
        self.status: int | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._body, name="host", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _body(self) -> None:
        try:
            result = self.main(self.run)
        except BaseException as e:  # noqa: BLE001 - reported, never raised out of the thread
            self.error = _format(e)
            self.status = EXIT_HOST_FAILED
            return
        if result is None:
            self.status = 0
        elif isinstance(result, bool) or not isinstance(result, int):
            self.error = f"main() returned {result!r}, not an int exit status"
            self.status = EXIT_HOST_FAILED
        else:
            self.status = result & 0xFF or (1 if result else 0)
