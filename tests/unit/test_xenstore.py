"""The VMM's xenstore: xenstore's permission rules and the hypercall's errors."""

import pytest

from paravm.hypercall.table import HypercallError, HypercallTable
from paravm.memory import GuestMemory, GuestMemoryError, MachineMemory, Region
from paravm.services.xenstore import (EACCES, EINVAL, ENOENT, HC_XENSTORE_OP, NO_READER,
                                      XS_READ, XS_RM, XS_WRITE, XenStore, XenStoreError)


class Spec:
    def __init__(self, name, xen=True):
        self.name, self.xen = name, (object() if xen else None)


class FakeDomain:
    def __init__(self, machine, name, domid):
        self.name, self.domid = name, domid
        self.ram = machine.alloc(512, name)     # 2 MiB: buffers above the reserved MiB
        self.memory = GuestMemory()
        self.memory.add_region(Region(0, self.ram))
        self.hypercalls = HypercallTable()

    def call(self, *args):
        fn = self.hypercalls.handlers[HC_XENSTORE_OP]
        args = list(args) + [0] * (6 - len(args))
        try:
            return fn(None, *args)
        except HypercallError as e:
            return -e.errno
        except GuestMemoryError:     # the dispatcher returns -EFAULT for it
            return -14


@pytest.fixture
def world():
    m = MachineMemory()
    xs = XenStore([Spec("a"), Spec("b"), Spec("c"), Spec("plain", xen=False)])
    doms = {n: FakeDomain(m, n, i + 1) for i, n in enumerate(["a", "b", "c", "plain"])}
    for d in doms.values():
        xs.attach(d)
    yield xs, doms
    m.close()


def put(dom, gpa, text):
    dom.memory.write(gpa, text.encode())
    return gpa, len(text)


def test_owner_writes_named_reader_reads_others_refused(world):
    xs, d = world
    a, b, c = d["a"], d["b"], d["c"]
    p, n = put(a, 0x101000, "data/vchan/ring-ref")
    v, vn = put(a, 0x102000, "42")
    assert a.call(XS_WRITE, p, n, v, vn, 2) == 0
    assert xs.read("/local/domain/1/data/vchan/ring-ref") == b"42"
    q, qn = put(b, 0x101000, "/local/domain/1/data/vchan/ring-ref")
    assert b.call(XS_READ, q, qn, 0x103000, 16) == 2
    assert b.memory.read(0x103000, 2) == b"42"
    q, qn = put(c, 0x101000, "/local/domain/1/data/vchan/ring-ref")
    assert c.call(XS_READ, q, qn, 0x103000, 16) == -EACCES
    # b may read but not overwrite or remove a's node, nor write in a's home
    v, vn = put(b, 0x102000, "7")
    assert b.call(XS_WRITE, q, qn, v, vn, NO_READER) == -EACCES
    assert b.call(XS_RM, q, qn) == -EACCES
    assert xs.read("/local/domain/1/data/vchan/ring-ref") == b"42"


def test_missing_node_bad_path_and_bad_buffer(world):
    xs, d = world
    a = d["a"]
    p, n = put(a, 0x101000, "nothing/here")
    assert a.call(XS_READ, p, n, 0x103000, 16) == -ENOENT
    p, n = put(a, 0x101000, "bad//path")
    assert a.call(XS_READ, p, n, 0x103000, 16) == -EINVAL
    p, n = put(a, 0x101000, "x")
    assert a.call(XS_READ, p, n, 0x103000, 16) == -ENOENT
    assert a.call(XS_READ, 1 << 60, 4, 0x103000, 16) == -14      # EFAULT
    assert a.call(XS_WRITE, p, n, 1 << 60, 4, NO_READER) == -14
    assert a.call(9, p, n) == -EINVAL
    assert HC_XENSTORE_OP not in [i for i, h in enumerate(d["plain"].hypercalls.handlers) if h]


def test_read_truncates_to_the_buffer_and_returns_the_full_length(world):
    xs, d = world
    xs.write("/local/domain/1/v", b"0123456789")
    a = d["a"]
    p, n = put(a, 0x101000, "v")
    a.memory.write(0x103000, b"\xff" * 8)
    assert a.call(XS_READ, p, n, 0x103000, 4) == 10
    assert a.memory.read(0x103000, 5) == b"0123\xff"


def test_domain_stop_removes_its_home_and_host_wait(world):
    xs, d = world
    xs.write("/local/domain/1/data/x", b"1")
    xs.domain_stopped(d["a"])
    with pytest.raises(XenStoreError) as e:
        xs.read("/local/domain/1/data/x")
    assert e.value.errno == ENOENT
    with pytest.raises(TimeoutError):
        xs.wait("/local/domain/2/ready", 0.05)
    xs.write("/local/domain/2/ready", "yes")
    assert xs.wait("/local/domain/2/ready", 1) == b"yes"


def test_rm_removes_the_subtree_only_when_all_of_it_is_the_callers(world):
    xs, d = world
    xs.write("/local/domain/1/t/a", b"1", caller=1)
    xs.write("/local/domain/1/t/b", b"2")           # the host's node in a's home
    with pytest.raises(XenStoreError) as e:
        xs.rm("/local/domain/1/t", caller=1)
    assert e.value.errno == EACCES
    xs.rm("/local/domain/1/t")
    with pytest.raises(XenStoreError):
        xs.read("/local/domain/1/t/a")


def test_buffers_in_the_reserved_area_are_refused(world):
    """The page tables, GDT, IDT and stub stacks are never read or written
    for a guest: a path, a value or a result buffer there is -EFAULT."""
    xs, d = world
    a = d["a"]
    p, n = put(a, 0x101000, "data/x")
    v, vn = put(a, 0x102000, "42")
    assert a.call(XS_WRITE, p, n, v, vn, NO_READER) == 0
    pml4 = bytes(a.memory.read(0x1000, 8))
    assert a.call(XS_READ, p, n, 0x1000, 8) == -14            # would overwrite the PML4
    assert a.memory.read(0x1000, 8) == pml4
    a.memory.write(0x9000, b"data/x")
    assert a.call(XS_READ, 0x9000, 6, 0x103000, 8) == -14     # a path in the IDT page
    assert a.call(XS_WRITE, p, n, 0x9000, 8, NO_READER) == -14

