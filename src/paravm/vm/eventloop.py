"""The VMM's event-loop thread: host-side file descriptors and timers.

Why a thread of its own: vCPU threads spend their lives in ``KVM_RUN`` and
must not block on anything else, while host-side endpoints and device
backends (an IVC endpoint's doorbell eventfd, a block backend's request
notification, a timeout) need something to wait on their fds.  One thread
blocked in ``epoll_wait`` (``selectors.DefaultSelector``) serves all of them;
guest-to-guest doorbells never come here (they go ioeventfd -> irqfd in the
kernel).

Kernel facts relied on: adding or removing an fd from another thread while
this one sleeps in ``epoll_wait`` is safe, and the change applies to the
next wait; an eventfd written by another thread (:meth:`EventLoop.call_soon`)
wakes the wait at once.

Callbacks run on the loop thread, one at a time, and must not block.  A
callback that raises is reported to ``on_error`` (default: one line on
stderr) and the loop goes on.  The loop is owned by the
:class:`paravm.Hypervisor`, which closes it (the thread is joined).
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import sys
import threading
import time
from collections import deque
from typing import Callable


def _report(where: str, exc: BaseException) -> None:
    sys.stderr.write(f"paravm: event loop: {where}: {type(exc).__name__}: {exc}\n")


class Timer:
    """A pending :meth:`EventLoop.call_later`; :meth:`cancel` stops it."""

    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn: Callable, args: tuple) -> None:
        self.when, self.fn, self.args, self.cancelled = when, fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self, name: str = "paravm-events",
                 on_error: Callable[[str, BaseException], None] = _report) -> None:
        self.name = name
        self.on_error = on_error
        self._sel = selectors.DefaultSelector()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._sel.register(self._wake, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._calls: deque[tuple[Callable, tuple]] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closing = False

    # --- any thread ---------------------------------------------------------------
    def add_reader(self, fd, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the loop thread whenever *fd* (an int or an
        object with ``fileno()``) is readable.  ``KeyError`` if already added."""
        with self._lock:
            self._check_open()
            self._sel.register(fd, selectors.EVENT_READ, callback)
            self._start()

    def remove_reader(self, fd) -> bool:
        """Stop watching *fd*; False if it was not watched."""
        with self._lock:
            try:
                self._sel.unregister(fd)
            except (KeyError, ValueError):
                return False
        return True

    def call_soon(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the loop thread, in call order."""
        with self._lock:
            self._check_open()
            self._calls.append((fn, args))
            self._start()
        os.eventfd_write(self._wake, 1)

    def call_later(self, delay: float, fn: Callable, *args) -> Timer:
        """Run ``fn(*args)`` on the loop thread after *delay* seconds (monotonic)."""
        t = Timer(time.monotonic() + max(0.0, delay), fn, args)
        with self._lock:
            self._check_open()
            heapq.heappush(self._timers, (t.when, next(self._seq), t))
            self._start()
        os.eventfd_write(self._wake, 1)
        return t

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def in_loop_thread(self) -> bool:
        return self._thread is threading.current_thread()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (pending calls and timers are dropped) and release
        the selector and the wake-up eventfd.  Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not None and not self.in_loop_thread():
            self._thread.join(timeout)
        self._sel.close()
        os.close(self._wake)

    # --- the thread -------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closing:
            raise RuntimeError("event loop is closed")

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._closing:
            timeout = None
            with self._lock:
                while self._timers and self._timers[0][2].cancelled:
                    heapq.heappop(self._timers)
                if self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
                if self._calls:
                    timeout = 0.0
            try:
                events = self._sel.select(timeout)
            except (OSError, ValueError):
                if self._closing:
                    return
                raise
            for key, _ in events:
                if key.data is None:           # the wake-up eventfd
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                    continue
                self._invoke("reader", key.data, ())
            self._run_due()

    def _run_due(self) -> None:
        now = time.monotonic()
        due: list[tuple[Callable, tuple]] = []
        with self._lock:
            while self._calls:
                due.append(self._calls.popleft())
            while self._timers and self._timers[0][0] <= now:
                t = heapq.heappop(self._timers)[2]
                if not t.cancelled:
                    due.append((t.fn, t.args))
        for fn, args in due:
            if self._closing:
                return
            self._invoke("call", fn, args)

    def _invoke(self, kind: str, fn: Callable, args: tuple) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - a callback must not stop the loop
            self.on_error(f"{kind} {getattr(fn, '__qualname__', fn)}", e)
