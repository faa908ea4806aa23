"""The event-loop thread: readers, calls, timers, errors, close."""

import os
import threading
import time

import pytest

from paravm.vm.eventloop import EventLoop


@pytest.fixture
def loop():
    errors = []
    lp = EventLoop(on_error=lambda where, e: errors.append((where, e)))
    lp.errors = errors
    yield lp
    lp.close()


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.001)


def test_no_thread_until_first_use(loop):
    assert not loop.running
    loop.call_soon(lambda: None)
    wait_for(lambda: loop.running)


def test_a_readable_eventfd_calls_its_reader_on_the_loop_thread(loop):
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    seen = []

    def on_ready():
        seen.append((os.eventfd_read(fd), threading.current_thread().name))

    loop.add_reader(fd, on_ready)
    os.eventfd_write(fd, 3)
    wait_for(lambda: seen)
    assert seen == [(3, "paravm-events")]
    assert loop.remove_reader(fd) is True
    assert loop.remove_reader(fd) is False
    os.eventfd_write(fd, 1)
    time.sleep(0.05)
    assert len(seen) == 1            # removed: not called again
    os.close(fd)


def test_a_reader_object_with_fileno_works(loop):
    class Endpoint:
        def __init__(self):
            self.fd = os.eventfd(0, os.EFD_NONBLOCK)

        def fileno(self):
            return self.fd

    ep, hits = Endpoint(), []
    loop.add_reader(ep, lambda: hits.append(os.eventfd_read(ep.fd)))
    with pytest.raises(KeyError):
        loop.add_reader(ep, lambda: None)
    os.eventfd_write(ep.fd, 1)
    wait_for(lambda: hits == [1])
    os.close(ep.fd)


def test_calls_run_in_order_and_timers_by_deadline(loop):
    out = []
    loop.call_later(0.06, out.append, "late")
    loop.call_later(0.02, out.append, "early")
    for i in range(5):
        loop.call_soon(out.append, i)
    wait_for(lambda: len(out) == 7)
    assert out == [0, 1, 2, 3, 4, "early", "late"]


def test_a_cancelled_timer_does_not_fire(loop):
    out = []
    t = loop.call_later(0.02, out.append, "no")
    t.cancel()
    loop.call_later(0.05, out.append, "yes")
    wait_for(lambda: out)
    time.sleep(0.03)
    assert out == ["yes"]


def test_timer_fires_not_before_its_delay(loop):
    t0 = time.monotonic()
    fired = []
    loop.call_later(0.05, lambda: fired.append(time.monotonic() - t0))
    wait_for(lambda: fired)
    assert fired[0] >= 0.05


def test_a_failing_callback_is_reported_and_the_loop_goes_on(loop):
    out = []

    def boom():
        raise ValueError("bad backend")

    loop.call_soon(boom)
    loop.call_soon(out.append, "after")
    wait_for(lambda: out == ["after"])
    assert len(loop.errors) == 1
    where, e = loop.errors[0]
    assert "boom" in where and isinstance(e, ValueError)


def test_calls_from_many_threads(loop):
    out = []
    lock = threading.Lock()

    def add(i):
        with lock:
            out.append(i)

    threads = [threading.Thread(target=lambda k=k: [loop.call_soon(add, k * 100 + j)
                                                    for j in range(100)]) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: len(out) == 400)
    assert sorted(out) == list(range(400))
    for k in range(4):    # each thread's calls ran in the order it made them
        mine = [v for v in out if v // 100 == k]
        assert mine == sorted(mine)


def test_close_joins_the_thread_and_refuses_new_work():
    lp = EventLoop()
    lp.call_soon(lambda: None)
    wait_for(lambda: lp.running)
    thread = lp._thread
    lp.close()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        lp.call_soon(lambda: None)
    lp.close()   # idempotent


def test_close_from_a_callback_does_not_deadlock():
    lp = EventLoop()
    done = threading.Event()

    def stop():
        lp.close()
        done.set()

    lp.call_soon(stop)
    assert done.wait(5)
    lp._thread.join(5)
    assert not lp._thread.is_alive()
