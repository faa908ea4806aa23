"""gntalloc and the host granter (paravm.services.grant.gntalloc), no KVM.

The peer is a guest-like domain 1 mapping the host's grants through the
hypervisor core into a "window" (real MAP_FIXED remaps, as the grant
service's windows), so the tests see what a guest would.  Cases:
specs/grant-mpt.md §D2.1, §D2.8 and §D4 14; errnos as Linux's gntalloc.
"""

from __future__ import annotations

import errno
import gc
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paravm.memory import PAGE_SIZE, MachineMemory, remap
from paravm.services.grant import abi as A
from paravm.services.grant.gntalloc import Gntalloc, host_granter
from paravm.services.grant.gntdev import Gntdev
from paravm.services.grant.service import GrantService
from paravm.services.grant.table import GrantError, GrantTable

from grant_fakes import FakeEvtchn

PERMIT, RDONLY = A.GTF_permit_access, A.GTF_readonly
READING, WRITING = A.GTF_reading, A.GTF_writing
CLEAR, SEND = A.UNMAP_NOTIFY_CLEAR_BYTE, A.UNMAP_NOTIFY_SEND_EVENT


class Peer:
    """Domain 1 mapping the host's grants into a window of its own."""

    def __init__(self, svc, machine, pages=8):
        self.svc = svc
        self.table = GrantTable(1, machine.alloc(1, "peer.gt"), lambda gfn: None, max_frames=1)
        svc.grants.add(self.table)
        self.window = machine.alloc(pages, "peer.window")
        self.handles = {}

    def map(self, slot, ref, readonly=False):
        """Map host grant *ref* at window page *slot*; a GNTST status."""
        w = self.window

        def place(frame, ro):
            remap.map_fixed(w.hva + slot * PAGE_SIZE, PAGE_SIZE, frame.fd, frame.offset,
                            writable=not ro)
            return lambda: remap.map_fixed(w.hva + slot * PAGE_SIZE, PAGE_SIZE, w.fd,
                                           slot * PAGE_SIZE)
        flags = A.GNTMAP_host_map | (A.GNTMAP_readonly if readonly else 0)
        try:
            self.handles[slot], _ = self.svc.grants.map(self.table, 0, ref, flags,
                                                        0x1000 * (slot + 1), place)
        except GrantError as e:
            return e.status
        return A.GNTST_okay

    def unmap(self, slot):
        self.svc.grants.unmap(self.table, self.handles.pop(slot))

    def page(self, slot):
        return self.window.buffer[slot * PAGE_SIZE:(slot + 1) * PAGE_SIZE]


@pytest.fixture
def env(machine):
    svc = GrantService(machine, [], evtchn=FakeEvtchn())
    peer = Peer(svc, machine)
    yield svc, peer
    svc.close()


@pytest.fixture
def shr(env):
    g = Gntalloc(env[0])
    yield g
    g.close()


def entry(svc, ref):
    """(flags, domid, frame) of the host's entry *ref*."""
    return A.GRANT_ENTRY_V1.unpack_from(svc.host.frames.buffer, 8 * ref)


def err(fn, *args, **kw):
    with pytest.raises(OSError) as e:
        fn(*args, **kw)
    return e.value.errno


# --- ALLOC_GREF ----------------------------------------------------------------------------------
def test_alloc_grants_zeroed_pages_to_the_domain(env, shr):
    svc, _ = env
    index, refs = shr.alloc_gref(1, 3, True)
    assert index == 0 and len(set(refs)) == 3 and min(refs) >= A.NR_RESERVED_ENTRIES
    frames = []
    for ref in refs:
        flags, domid, gfn = entry(svc, ref)
        assert (flags, domid) == (PERMIT, 1)
        frame = svc.host.frame_of(gfn)                # an MFN of a page the host owns
        assert frame is not None
        frames.append(frame)
    v = shr.mmap(index, 3)
    assert bytes(v) == bytes(3 * PAGE_SIZE)
    v[PAGE_SIZE + 1] = 0x5A
    import ctypes
    assert ctypes.string_at(frames[1].hva + 1, 1) == b"\x5a"    # the view is that page
    _, ro = shr.alloc_gref(1, 1, False)
    assert entry(svc, ro[0])[0] == PERMIT | RDONLY


def test_indices_advance_per_file_and_are_never_reused(env, shr):
    assert shr.alloc_gref(1, 2, True)[0] == 0
    assert shr.alloc_gref(1, 1, True)[0] == 2 * PAGE_SIZE
    shr.dealloc_gref(0, 2)
    assert shr.alloc_gref(1, 1, True)[0] == 3 * PAGE_SIZE
    assert shr.alloc_gref(1, 0, True) == (4 * PAGE_SIZE, [])    # count 0: nothing, no advance
    assert shr.alloc_gref(1, 1, True)[0] == 4 * PAGE_SIZE
    with Gntalloc(env[0]) as other:
        assert other.alloc_gref(1, 1, True)[0] == 0


def test_the_peer_sees_host_writes_and_readonly_grants_refuse_writable_maps(env, shr):
    svc, peer = env
    i, (rw,) = shr.alloc_gref(1, 1, True)
    j, (ro,) = shr.alloc_gref(1, 1, False)
    v = shr.mmap(i, 2)
    v[:5] = b"hello"
    v[PAGE_SIZE:PAGE_SIZE + 2] = b"ro"
    assert peer.map(0, rw) == A.GNTST_okay and bytes(peer.page(0)[:5]) == b"hello"
    peer.page(0)[5:8] = b"!!!"
    assert bytes(v[:8]) == b"hello!!!"
    assert peer.map(1, ro) == A.GNTST_general_error
    assert peer.map(1, ro, readonly=True) == A.GNTST_okay
    assert bytes(peer.page(1)[:2]) == b"ro"
    assert entry(svc, rw)[0] == PERMIT | READING | WRITING
    assert entry(svc, ro)[0] == PERMIT | RDONLY | READING


def test_a_grant_names_one_domain_only(env, shr):
    _, peer = env
    _, (ref,) = shr.alloc_gref(2, 1, True)
    assert peer.map(0, ref) == A.GNTST_general_error


# --- the limit -----------------------------------------------------------------------------------
def test_the_limit_counts_pages_a_peer_still_maps(env, shr):
    svc, peer = env
    index, refs = shr.alloc_gref(1, A.GNTALLOC_LIMIT, True)
    assert err(shr.alloc_gref, 1, 1, True) == errno.ENOSPC
    with Gntalloc(svc) as other:                       # the limit is host-wide
        assert err(other.alloc_gref, 1, 1, True) == errno.ENOSPC
    assert peer.map(0, refs[7]) == A.GNTST_okay
    shr.dealloc_gref(index, A.GNTALLOC_LIMIT)
    assert host_granter(svc).deferred == 1
    assert err(shr.alloc_gref, 1, A.GNTALLOC_LIMIT, True) == errno.ENOSPC
    i, _ = shr.alloc_gref(1, A.GNTALLOC_LIMIT - 1, True)
    peer.unmap(0)
    assert err(shr.alloc_gref, 1, 2, True) == errno.ENOSPC
    assert shr.alloc_gref(1, 1, True)[1]               # the deferred page was freed first
    assert host_granter(svc).deferred == 0


def test_a_full_host_table_is_enospc_and_a_revoked_ref_is_reused(env):
    svc, _ = env
    g = host_granter(svc)
    fr = svc.host_alloc(1)
    refs = []
    with pytest.raises(OSError) as e:
        while True:
            refs.append(g.grant(1, fr.mfn))
    assert e.value.errno == errno.ENOSPC
    assert len(refs) == svc.host.nr_entries - A.NR_RESERVED_ENTRIES
    assert sorted(refs) == list(range(A.NR_RESERVED_ENTRIES, svc.host.nr_entries))
    assert g.end_foreign_access(refs[100])
    assert g.grant(1, fr.mfn) == refs[100]


# --- mmap / munmap -------------------------------------------------------------------------------
def test_mmap_refusals(env, shr):
    i, _ = shr.alloc_gref(1, 3, True)
    assert err(shr.mmap, i, 1, shared=False) == errno.EINVAL
    assert err(shr.mmap, i, 0) == errno.EINVAL
    assert err(shr.mmap, i + 1, 1) == errno.EINVAL
    assert err(shr.mmap, i, 4) == errno.ENOENT
    assert err(shr.mmap, 3 * PAGE_SIZE, 1) == errno.ENOENT
    shr.dealloc_gref(i + PAGE_SIZE, 1)
    assert err(shr.mmap, i, 3) == errno.ENOENT            # no longer consecutive in the file
    assert len(shr.mmap(i + 2 * PAGE_SIZE, 1)) == PAGE_SIZE
    with Gntalloc(env[0]) as other:
        other.alloc_gref(1, 1, True)
        assert err(shr.mmap, 4 * PAGE_SIZE, 1) == errno.ENOENT   # another file's


def test_one_mmap_spans_two_allocations_and_a_page_can_be_mapped_twice(shr):
    i, _ = shr.alloc_gref(1, 1, True)
    j, _ = shr.alloc_gref(1, 2, True)
    v = shr.mmap(i, 3)
    w = shr.mmap(j, 1)
    v[PAGE_SIZE] = 9
    assert w[0] == 9


def test_munmap_detaches_the_view_and_takes_only_views_or_indices(shr):
    i, _ = shr.alloc_gref(1, 1, True)
    v = shr.mmap(i, 1)
    s = v[:8]
    v[0] = 1
    shr.munmap(v)
    with pytest.raises(ValueError):
        v[0]
    assert bytes(s) == bytes(8)                        # the process no longer reaches the page
    shr.munmap(v)                                      # twice: a no-op
    for bad in (None, "v", 1.0):
        assert err(shr.munmap, bad) == errno.EINVAL
    assert shr.mmap(i, 1)[0] == 1                      # the page itself is untouched


# --- DEALLOC_GREF --------------------------------------------------------------------------------
def test_dealloc_needs_exactly_a_run_of_this_files_grefs(shr):
    i, _ = shr.alloc_gref(1, 2, True)
    for index, count in ((i, 3), (i + PAGE_SIZE, 2), (i, 0), (7 * PAGE_SIZE, 1), (i + 1, 1)):
        assert err(shr.dealloc_gref, index, count) == errno.EINVAL, (index, count)
    shr.dealloc_gref(i, 2)
    assert err(shr.dealloc_gref, i, 2) == errno.EINVAL


def test_pages_survive_dealloc_until_munmap(env, shr, machine):
    svc, peer = env
    ranges = machine.live_ranges
    i, (ref,) = shr.alloc_gref(1, 1, True)
    v = shr.mmap(i, 1)
    v[:4] = b"kept"
    shr.dealloc_gref(i, 1)
    assert bytes(v[:4]) == b"kept" and entry(svc, ref)[0] == PERMIT
    assert peer.map(0, ref) == A.GNTST_okay and bytes(peer.page(0)[:4]) == b"kept"
    peer.unmap(0)
    assert machine.live_ranges == ranges + 1
    shr.munmap(v)
    assert entry(svc, ref)[0] == 0 and machine.live_ranges == ranges
    assert peer.map(0, ref) == A.GNTST_general_error


def test_a_peer_mapping_defers_the_revoke_and_keeps_the_page(env, shr, machine):
    svc, peer = env
    g = host_granter(svc)
    ranges = machine.live_ranges
    i, (ref,) = shr.alloc_gref(1, 1, True)
    assert peer.map(0, ref) == A.GNTST_okay
    peer.page(0)[:3] = b"abc"
    assert not g.end_foreign_access_ref(ref) and g.query_foreign_access(ref)
    shr.dealloc_gref(i, 1)
    assert g.deferred == 1 and entry(svc, ref)[0] == PERMIT | READING | WRITING
    assert machine.live_ranges == ranges + 1           # not freed while the peer maps it
    assert g.retry_deferred() == 1
    peer.page(0)[3:6] = b"def"                        # the peer's page is still real memory
    assert bytes(peer.page(0)[:6]) == b"abcdef"
    peer.unmap(0)
    assert g.retry_deferred() == 0
    assert entry(svc, ref)[0] == 0 and machine.live_ranges == ranges
    assert not g.query_foreign_access(ref)


def test_a_read_only_mapping_keeps_the_grant_busy_too(env, shr):
    svc, peer = env
    g = host_granter(svc)
    _, (ref,) = shr.alloc_gref(1, 1, False)
    assert peer.map(0, ref, readonly=True) == A.GNTST_okay
    assert entry(svc, ref)[0] == PERMIT | RDONLY | READING
    assert g.query_foreign_access(ref) and not g.end_foreign_access_ref(ref)
    peer.unmap(0)
    assert g.end_foreign_access_ref(ref) and entry(svc, ref)[0] == 0


def test_the_host_granter_refuses_refs_outside_the_table(env):
    g = host_granter(env[0])
    for ref in (0, 7, env[0].host.nr_entries, -1, None):
        assert err(g.end_foreign_access_ref, ref) == errno.EINVAL
        assert err(g.query_foreign_access, ref) == errno.EINVAL
    assert err(g.grant, 1 << 16, 5) == errno.EINVAL
    assert err(g.grant, 1, 1 << 32) == errno.EINVAL


# --- SET_UNMAP_NOTIFY ----------------------------------------------------------------------------
def test_set_unmap_notify_checks_in_gntallocs_order(env, shr):
    i, _ = shr.alloc_gref(1, 1, True)
    assert err(shr.set_unmap_notify, i + PAGE_SIZE, 0x4, 99) == errno.ENOENT   # lookup first
    assert err(shr.set_unmap_notify, i, 0x4) == errno.EINVAL
    assert err(shr.set_unmap_notify, i, SEND, 99) == errno.EINVAL
    shr.set_unmap_notify(i + 4095, CLEAR | SEND, 5)


def test_the_notify_clears_our_byte_sends_the_event_then_revokes(env, shr):
    svc, peer = env
    i, (a, b) = shr.alloc_gref(1, 2, True)
    v = shr.mmap(i, 2)
    v[:] = b"\x11" * (2 * PAGE_SIZE)
    assert peer.map(0, b) == A.GNTST_okay
    shr.set_unmap_notify(i + PAGE_SIZE + 21, CLEAR, 0)
    shr.set_unmap_notify(i + 100, CLEAR | SEND, 5)     # page a: not mapped by the peer
    shr.set_unmap_notify(i + PAGE_SIZE + 22, CLEAR | SEND, 6)   # replaces the first for b
    svc.evtchn.at_send = lambda: (entry(svc, a)[0], entry(svc, b)[0], peer.page(0)[22])
    shr.close()
    ports = [p for _, p, _ in svc.evtchn.sent]
    assert sorted(ports) == [5, 6]
    state = {p: s for _, p, s in svc.evtchn.sent}
    assert state[5][0] == PERMIT                      # the event went before the revoke
    assert state[6][2] == 0                           # the byte was cleared before the event
    assert peer.page(0)[21] == 0x11 and peer.page(0)[22] == 0
    assert entry(svc, a)[0] == 0                      # revoked after the event
    assert entry(svc, b)[0] == PERMIT | READING | WRITING   # still mapped: deferred
    peer.unmap(0)
    assert host_granter(svc).retry_deferred() == 0 and entry(svc, b)[0] == 0


def test_the_notify_fires_when_the_file_is_garbage_collected(env):
    svc, peer = env
    g = Gntalloc(svc)
    i, (ref,) = g.alloc_gref(1, 1, True)
    g.mmap(i, 1)[9] = 0x33
    assert peer.map(0, ref) == A.GNTST_okay
    g.set_unmap_notify(i + 9, CLEAR | SEND, 5)
    del g
    gc.collect()
    assert peer.page(0)[9] == 0 and [p for _, p, _ in svc.evtchn.sent] == [5]
    peer.unmap(0)


def test_a_gntdev_of_the_host_maps_its_own_gntalloc_page(env, shr):
    svc, _ = env
    i, (ref,) = shr.alloc_gref(0, 1, True)             # the XTF self-grant trick, for dom0
    shr.mmap(i, 1)[:4] = b"self"
    with Gntdev(svc) as dev:
        v = dev.mmap(dev.map_grant_refs([(0, ref)]), 1)
        assert bytes(v[:4]) == b"self"
        assert entry(svc, ref)[0] == PERMIT | READING


# --- lifetime ------------------------------------------------------------------------------------
def test_files_released_after_the_service_closed_touch_nothing_freed(machine):
    svc = GrantService(machine, [], evtchn=FakeEvtchn())
    peer = Peer(svc, machine)
    g, d = Gntalloc(svc), Gntdev(svc)
    i, (ref,) = g.alloc_gref(0, 1, True)
    g.mmap(i, 1)
    g.set_unmap_notify(i, CLEAR | SEND, 5)
    v = d.mmap(d.map_grant_refs([(0, ref)]), 1, writable=True)
    d.set_unmap_notify(0, CLEAR | SEND, 6)
    assert peer.map(0, ref) == A.GNTST_general_error  # granted to domain 0 only
    svc.close()                                        # frees the host's table and pages
    g.close()
    d.close()
    assert [p for _, p, _ in svc.evtchn.sent] == [5, 6]      # no crash on freed memory
    assert err(Gntalloc(svc).alloc_gref, 1, 1, True) == errno.ENXIO
    with pytest.raises(ValueError):
        v[0]



def test_a_closed_gntalloc_is_ebadf(env):
    g = Gntalloc(env[0])
    g.close()
    g.close()
    assert err(g.alloc_gref, 1, 1, True) == errno.EBADF


def test_200_alloc_mmap_dealloc_cycles_leak_nothing(env, machine):
    svc, peer = env

    def census():
        gc.collect()
        return len(os.listdir("/proc/self/fd")), machine.live_ranges

    def cycle(g, k):
        i, refs = g.alloc_gref(1, 1 + k % 3, True)
        v = g.mmap(i, len(refs))
        v[0] = k & 0xFF
        if k % 2:
            g.dealloc_gref(i, len(refs))
            g.munmap(v)
        else:
            assert peer.map(0, refs[0]) == A.GNTST_okay
            g.munmap(v)
            g.dealloc_gref(i, len(refs))
            peer.unmap(0)

    with Gntalloc(svc) as g:
        for k in range(10):
            cycle(g, k)
        before = census()
        for k in range(200):
            cycle(g, k)
        host_granter(svc).retry_deferred()
        after = census()
    assert after == before and host_granter(svc).gntalloc_pages == 0
    assert host_granter(svc).deferred == 0


_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
                  st.integers(-2, 5000), st.text(max_size=3), st.floats(allow_nan=False),
                  st.lists(st.integers(), max_size=2))
_CALLS = {"alloc_gref": 3, "mmap": 4, "munmap": 1, "dealloc_gref": 2, "set_unmap_notify": 3}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(_CALLS)), args=st.lists(_JUNK, min_size=4, max_size=4))
def test_bad_arguments_raise_only_oserror(name, args):
    machine = MachineMemory()
    svc = GrantService(machine, [], evtchn=FakeEvtchn())
    g = Gntalloc(svc)
    try:
        g.alloc_gref(1, 2, True)
        getattr(g, name)(*args[:_CALLS[name]])
    except OSError:
        pass
    finally:
        g.close()
        svc.close()
        machine.close()
