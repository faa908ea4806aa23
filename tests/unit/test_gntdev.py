"""gntdev, the host's grant mapper (paravm.services.grant.gntdev), no KVM.

The granter is a guest-like domain 1: RAM in a FrameRange and a grant table
added to a real GrantService (whose host table is domain 0's).  Views are
real MAP_FIXED remaps, so reading a view reads the guest's page.  Cases:
specs/grant-mpt.md §D2.7 and §D4 1-11, 13; errnos as Linux's driver.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import mmap
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paravm.memory import PAGE_SIZE, MachineMemory
from paravm.services.grant import abi as A
from paravm.services.grant import gntdev as G
from paravm.services.grant.gntalloc import host_granter
from paravm.services.grant.gntdev import CopySegment, Foreign, Gntdev, Local
from paravm.services.grant.service import GrantService
from paravm.services.grant.table import Frame, GrantTable

from grant_fakes import FakeEvtchn, GrantingDomain

OK = A.GNTST_okay
CLEAR, SEND = A.UNMAP_NOTIFY_CLEAR_BYTE, A.UNMAP_NOTIFY_SEND_EVENT
READING, WRITING = A.GTF_reading, A.GTF_writing
PERMIT = A.GTF_permit_access


class Guest(GrantingDomain):
    """Domain *domid*: *pages* of RAM (page i filled with byte i+1) and a
    grant table in the service's Grants."""

    def __init__(self, svc, machine, domid=1, pages=16):
        super().__init__(machine, svc.grants, domid, ram_pages=pages)
        for i in range(pages):
            self.ram.buffer[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = bytes([i + 1]) * PAGE_SIZE

    def grant(self, ref, gfn, flags=PERMIT, domid=0):
        self.write_entry(ref, flags, domid, gfn)


@pytest.fixture
def env(machine):
    svc = GrantService(machine, [], evtchn=FakeEvtchn())
    guest = Guest(svc, machine)
    for ref in range(8, 16):                        # ref r -> page r - 6 (2..9)
        guest.grant(ref, ref - 6)
    guest.grant(16, 10, PERMIT | A.GTF_readonly)
    yield svc, guest
    svc.close()


@pytest.fixture
def dev(env):
    d = Gntdev(env[0])
    yield d
    d.close()


def err(fn, *args, **kw):
    """The errno *fn* raises (it must raise OSError)."""
    with pytest.raises(OSError) as e:
        fn(*args, **kw)
    return e.value.errno


# --- D4 1: MAP_GRANT_REF ---------------------------------------------------------------------
def test_map_counts_outside_1_to_the_limit_are_einval_and_bad_refs_efault(dev):
    assert err(dev.map_grant_refs, []) == errno.EINVAL
    assert err(dev.map_grant_refs, [(1, 8)] * (A.GNTDEV_LIMIT + 1)) == errno.EINVAL
    for bad in (None, 5, [(1,)], [(1, 8, 9)], [("1", 8)], [(-1, 8)], [(1, 1 << 32)], [None]):
        assert err(dev.map_grant_refs, bad) == errno.EFAULT, bad
    assert dev.map_grant_refs([(1, 8)] * A.GNTDEV_LIMIT) == 0    # the limit itself is fine


def test_indices_are_page_aligned_byte_offsets_that_do_not_overlap(dev):
    a = dev.map_grant_refs([(1, 8), (1, 9), (1, 10)])
    b = dev.map_grant_refs([(1, 11)])
    c = dev.map_grant_refs([(1, 12), (1, 13)])
    assert (a, b, c) == (0, 3 * PAGE_SIZE, 4 * PAGE_SIZE)


def test_a_new_map_skips_a_hole_of_exactly_its_size(dev):
    a = dev.map_grant_refs([(1, 8)])                          # page 0
    b = dev.map_grant_refs([(1, 8)] * 2)                      # pages 1-2
    c = dev.map_grant_refs([(1, 8)])                          # page 3
    dev.unmap_grant_ref(b, 2)                                 # a 2-page hole at 1
    assert dev.map_grant_refs([(1, 8)] * 2) == 4 * PAGE_SIZE  # exactly 2: skipped
    assert dev.map_grant_refs([(1, 8)]) == 1 * PAGE_SIZE      # 1 < 2: fits
    dev.unmap_grant_ref(a)                                    # a 1-page hole at 0
    assert dev.map_grant_refs([(1, 8)]) == 6 * PAGE_SIZE      # skipped again
    dev.unmap_grant_ref(6 * PAGE_SIZE)
    assert dev.map_grant_refs([(1, 8)]) == 6 * PAGE_SIZE      # a freed index is reused
    assert c == 3 * PAGE_SIZE


# --- D4 2: mmap ----------------------------------------------------------------------------------
def test_mmap_needs_the_exact_offset_and_length(dev):
    i = dev.map_grant_refs([(1, 8), (1, 9)])
    assert err(dev.mmap, i, 1) == errno.EINVAL                 # no partial mmaps
    assert err(dev.mmap, i, 3) == errno.EINVAL
    assert err(dev.mmap, i + PAGE_SIZE, 1) == errno.EINVAL
    assert err(dev.mmap, i + 1, 2) == errno.EINVAL             # unaligned
    assert err(dev.mmap, i, 0) == errno.EINVAL
    v = dev.mmap(i, 2)                                         # the failures set no latch
    assert len(v) == 2 * PAGE_SIZE


def test_a_writable_private_mapping_is_einval(dev):
    i = dev.map_grant_refs([(1, 8)])
    assert err(dev.mmap, i, 1, writable=True, shared=False) == errno.EINVAL
    assert bytes(dev.mmap(i, 1, shared=False)[:1]) == b"\x03"  # read-only private is fine


def test_a_map_is_mmapped_once_in_its_life(env, dev):
    _, guest = env
    i = dev.map_grant_refs([(1, 8)])
    v = dev.mmap(i, 1)
    assert err(dev.mmap, i, 1) == errno.EINVAL
    dev.munmap(v)
    assert err(dev.mmap, i, 1) == errno.EINVAL                 # even after munmap
    j = dev.map_grant_refs([(1, 9)])
    guest.grant(9, 3, PERMIT, domid=7)
    assert err(dev.mmap, j, 1) == errno.EINVAL
    guest.grant(9, 3)
    assert err(dev.mmap, j, 1) == errno.EINVAL                 # even after a failed mmap


# --- D4 3: grants checked at mmap --------------------------------------------------------------
def test_a_grant_naming_another_domain_maps_but_does_not_mmap(env, dev):
    _, guest = env
    guest.grant(20, 3, PERMIT, domid=2)
    i = dev.map_grant_refs([(1, 20)])                          # no hypercall yet
    assert err(dev.mmap, i, 1) == errno.EINVAL
    assert guest.flags(20) == PERMIT


def test_refs_past_the_table_and_writable_maps_of_readonly_grants_are_einval(dev):
    assert err(dev.mmap, dev.map_grant_refs([(1, 512)]), 1) == errno.EINVAL
    assert err(dev.mmap, dev.map_grant_refs([(1, 16)]), 1, writable=True) == errno.EINVAL
    assert err(dev.mmap, dev.map_grant_refs([(99, 8)]), 1) == errno.EINVAL   # no domain 99
    v = dev.mmap(dev.map_grant_refs([(1, 16)]), 1)             # read-only of read-only: fine
    assert v[0] == 11


def test_the_domid_is_cut_to_sixteen_bits_as_the_drivers_map_op(dev):
    v = dev.mmap(dev.map_grant_refs([((1 << 16) | 1, 8)]), 1)
    assert v[0] == 3


def test_a_failed_mmap_keeps_the_good_elements_mapped_until_unmap(env, dev):
    _, guest = env
    i = dev.map_grant_refs([(1, 8), (1, 512), (1, 9)])
    assert err(dev.mmap, i, 3) == errno.EINVAL
    assert guest.flags(8) == guest.flags(9) == PERMIT | READING
    assert not guest.end_access(8)
    dev.unmap_grant_ref(i, 3)
    assert guest.flags(8) == guest.flags(9) == PERMIT


# --- D4 4: data ----------------------------------------------------------------------------------
def test_views_share_the_granters_pages_both_ways(env, dev):
    _, guest = env
    v = dev.mmap(dev.map_grant_refs([(1, 8), (1, 9)]), 2, writable=True)
    assert v[0] == 3 and v[PAGE_SIZE] == 4
    guest.page(2)[10:15] = b"guest"
    assert bytes(v[10:15]) == b"guest"
    v[PAGE_SIZE + 100:PAGE_SIZE + 104] = b"host"
    assert bytes(guest.page(3)[100:104]) == b"host"
    assert guest.flags(8) == guest.flags(9) == PERMIT | READING | WRITING


def test_a_readonly_view_refuses_writes_by_every_route(env, dev):
    _, guest = env
    v = dev.mmap(dev.map_grant_refs([(1, 8)]), 1)
    assert v.readonly
    with pytest.raises(TypeError):
        v[0] = 1
    with pytest.raises(TypeError):
        v.obj[0] = 1                                           # the mmap object itself
    with pytest.raises(TypeError):
        ctypes.c_char.from_buffer(v)
    assert guest.page(2)[0] == 3 and guest.flags(8) == PERMIT | READING


# --- D4 5 and 7: pins, munmap, UNMAP -------------------------------------------------------------
def test_bits_stay_after_munmap_until_unmap_then_the_granter_can_revoke(env, dev):
    _, guest = env
    i = dev.map_grant_refs([(1, 8)])
    v = dev.mmap(i, 1, writable=True)
    assert not guest.end_access(8)
    dev.munmap(v)
    with pytest.raises(ValueError):
        v[0]                                                   # the returned view is released
    assert guest.flags(8) == PERMIT | READING | WRITING        # HVM gntdev: kept until UNMAP
    dev.unmap_grant_ref(i, 1)
    assert guest.flags(8) == PERMIT and guest.end_access(8) and guest.flags(8) == 0


def test_unmap_errors_and_count_zero(dev):
    i = dev.map_grant_refs([(1, 8), (1, 9)])
    assert err(dev.unmap_grant_ref, i + PAGE_SIZE) == errno.ENOENT    # not a map's start
    assert err(dev.unmap_grant_ref, i, 1) == errno.ENOENT             # wrong count
    assert err(dev.unmap_grant_ref, 1 << 40) == errno.ENOENT
    dev.unmap_grant_ref(i + 5, 0)                              # low bits ignored, 0 = any count
    assert err(dev.unmap_grant_ref, i) == errno.ENOENT


def test_unmap_before_munmap_succeeds_and_the_view_works_until_munmap(env, dev):
    _, guest = env
    i = dev.map_grant_refs([(1, 8)])
    v = dev.mmap(i, 1, writable=True)
    dev.unmap_grant_ref(i, 1)
    v[0] = 0x77
    assert guest.page(2)[0] == 0x77 and guest.flags(8) & WRITING
    j = dev.map_grant_refs([(1, 9)])
    assert j == i                                              # the index is free again
    w = dev.mmap(j, 1)
    assert w[0] == 4
    dev.munmap(v)
    assert guest.flags(8) == PERMIT and guest.flags(9) == PERMIT | READING


def test_a_slice_held_after_the_grants_go_reads_zeros_and_never_reaches_the_granter(env, dev):
    _, guest = env
    i = dev.map_grant_refs([(1, 8)])
    v = dev.mmap(i, 1, writable=True)
    s = v[16:32]
    dev.munmap(v)
    assert bytes(s[:2]) == b"\x03\x03"                         # still the grant until UNMAP
    dev.unmap_grant_ref(i)
    assert bytes(s) == bytes(16)
    s[0] = 0x55
    assert guest.page(2)[16] == 3
    s.release()


def test_munmap_of_something_else_is_einval_and_twice_is_a_no_op(dev):
    v = dev.mmap(dev.map_grant_refs([(1, 8)]), 1)
    for bad in (None, "x", 1.5, [v]):
        assert err(dev.munmap, bad) == errno.EINVAL
    dev.munmap(v)
    dev.munmap(v)
    dev.munmap(12345 * PAGE_SIZE)


def test_munmap_by_index(env, dev):
    _, guest = env
    i = dev.map_grant_refs([(1, 9)])
    dev.mmap(i, 1)
    dev.unmap_grant_ref(i)
    assert guest.flags(9) == PERMIT | READING
    dev.munmap(i)
    assert guest.flags(9) == PERMIT


# --- D4 6 ----------------------------------------------------------------------------------------
def test_the_granter_clearing_a_mapped_entry_changes_nothing_for_the_view(env, dev):
    _, guest = env
    v = dev.mmap(dev.map_grant_refs([(1, 8)]), 1)
    guest.grant(8, 5, 0)                            # a hostile granter: invalid, other frame
    assert v[0] == 3                                # the active entry's frame, still mapped
    assert dev.mmap(dev.map_grant_refs([(1, 8)]), 1)[0] == 3          # RO: active entry
    assert err(dev.mmap, dev.map_grant_refs([(1, 8)]), 1, writable=True) == errno.EINVAL


# --- D4 8, 9 -------------------------------------------------------------------------------------
def test_get_offset_for_vaddr_finds_the_map_of_an_address_in_a_view(env, dev):
    _, guest = env
    dev.map_grant_refs([(1, 8)])
    i = dev.map_grant_refs([(1, 9), (1, 10)])
    v = dev.mmap(i, 2)
    start = G._address(v)
    assert dev.get_offset_for_vaddr(start) == (i, 2)
    assert dev.get_offset_for_vaddr(start + PAGE_SIZE + 5) == (i, 2)
    assert err(dev.get_offset_for_vaddr, guest.ram.hva) == errno.EINVAL    # another mapping
    assert err(dev.get_offset_for_vaddr, -1) == errno.EINVAL
    # find_vma: the first mapping that ends above the address decides
    with open("/proc/self/maps") as f:
        spans = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in f]
    in_gap_below = not any(lo <= start - 1 < hi for lo, hi in spans)
    if in_gap_below:
        assert dev.get_offset_for_vaddr(start - 1) == (i, 2)
    else:
        assert err(dev.get_offset_for_vaddr, start - 1) == errno.EINVAL
    dev.munmap(v)
    assert err(dev.get_offset_for_vaddr, start) == errno.EINVAL


def test_any_gntdev_view_of_the_process_counts(env, dev):
    with Gntdev(env[0]) as other:
        v = other.mmap(other.map_grant_refs([(1, 8)]), 1)
        assert dev.get_offset_for_vaddr(G._address(v)) == (0, 1)


def test_set_max_grants_is_enotty_on_modern_kernels(dev):
    for n in (0, 1, 1024, 1 << 40):
        assert err(dev.set_max_grants, n) == errno.ENOTTY


# --- D4 10: unmap notification -------------------------------------------------------------------
def test_set_unmap_notify_checks_in_the_drivers_order(env, dev):
    i = dev.map_grant_refs([(1, 8)])
    assert err(dev.set_unmap_notify, 1 << 40, 0x4, 5) == errno.EINVAL     # action first
    assert err(dev.set_unmap_notify, 1 << 40, SEND, 99) == errno.EINVAL   # then the port
    assert err(dev.set_unmap_notify, i + PAGE_SIZE, CLEAR, 5) == errno.ENOENT
    dev.mmap(i, 1)
    assert err(dev.set_unmap_notify, i, CLEAR) == errno.EINVAL            # read-only map
    dev.set_unmap_notify(i + 7, SEND, 5)
    env[0].evtchn = None
    assert err(dev.set_unmap_notify, i, SEND, 5) == errno.EINVAL          # no event service


def test_the_byte_is_cleared_before_its_unmap_and_the_event_sent_after_all(env, dev):
    svc, guest = env
    i = dev.map_grant_refs([(1, 8), (1, 9), (1, 10)])
    dev.mmap(i, 3, writable=True)
    dev.set_unmap_notify(i + PAGE_SIZE + 21, CLEAR | SEND, 5)
    svc.evtchn.at_send = lambda: (guest.page(3)[21], [guest.flags(r) for r in (8, 9, 10)])
    dev.unmap_grant_ref(i)
    assert svc.evtchn.sent == []                   # still mmapped
    dev.close()
    # the byte reached the granter's page, so it was written while mapped; when
    # the event went every grant was unmapped already
    assert svc.evtchn.sent == [(0, 5, (0, [PERMIT] * 3))]
    assert guest.page(3)[20] == 4 and guest.page(3)[22] == 4


def test_a_second_set_unmap_notify_replaces_the_first(env, dev):
    svc, guest = env
    i = dev.map_grant_refs([(1, 8)])
    dev.mmap(i, 1, writable=True)
    dev.set_unmap_notify(i + 1, CLEAR | SEND, 5)
    dev.set_unmap_notify(i + 2, CLEAR | SEND, 6)
    dev.unmap_grant_ref(i)
    dev.close()
    assert [p for _, p, _ in svc.evtchn.sent] == [6]
    assert bytes(guest.page(2)[:4]) == b"\x03\x03\x00\x03"


def test_a_map_never_mmapped_still_sends_its_event(env, dev):
    svc, _ = env
    i = dev.map_grant_refs([(1, 8)])
    dev.set_unmap_notify(i, CLEAR | SEND, 6)
    dev.unmap_grant_ref(i)
    assert [p for _, p, _ in svc.evtchn.sent] == [6]


def test_clear_byte_set_before_a_readonly_mmap_is_discarded_as_xen_does(env, dev):
    svc, guest = env
    i = dev.map_grant_refs([(1, 8)])
    dev.set_unmap_notify(i + 3, CLEAR | SEND, 5)               # allowed: flags not known yet
    dev.mmap(i, 1)
    dev.close()
    assert guest.page(2)[3] == 3 and len(svc.evtchn.sent) == 1


def test_notifications_fire_when_the_gntdev_is_garbage_collected(env):
    svc, guest = env
    d = Gntdev(svc)
    i = d.map_grant_refs([(1, 8)])
    v = d.mmap(i, 1, writable=True)
    d.set_unmap_notify(i + 9, CLEAR | SEND, 5)
    del d
    gc.collect()
    assert guest.page(2)[9] == 0 and [p for _, p, _ in svc.evtchn.sent] == [5]
    assert guest.flags(8) == PERMIT
    with pytest.raises(ValueError):
        v[0]


_CHILD = textwrap.dedent("""
    import os, sys
    from paravm.memory import MachineMemory, PAGE_SIZE
    from paravm.services.grant import abi as A
    from paravm.services.grant.gntdev import Gntdev
    from paravm.services.grant.service import GrantService
    from paravm.services.grant.table import Frame, GrantTable
    import mmap

    ram_fd = int(sys.argv[1])
    ram = mmap.mmap(ram_fd, 4 * PAGE_SIZE)
    hva = __import__("ctypes").addressof(__import__("ctypes").c_char.from_buffer(ram))

    class Ev:
        def host_port_bound(self, port): return True
        def send(self, domid, port):
            print("event", port, ram[PAGE_SIZE + 33], table_flags(), flush=True)
            return 0

    m = MachineMemory()
    svc = GrantService(m, [], evtchn=Ev())
    t = GrantTable(1, m.alloc(1, "gt"), lambda gfn: Frame(ram_fd, gfn * PAGE_SIZE,
                   hva + gfn * PAGE_SIZE, 1000 + gfn), max_frames=1)
    svc.grants.add(t)
    A.GRANT_ENTRY_V1.pack_into(t.frames.buffer, 64, A.GTF_permit_access, 0, 1)
    table_flags = lambda: A.GRANT_ENTRY_V1.unpack_from(t.frames.buffer, 64)[0]
    d = Gntdev(svc)
    i = d.map_grant_refs([(1, 8)])
    v = d.mmap(i, 1, writable=True)
    d.set_unmap_notify(i + 33, A.UNMAP_NOTIFY_CLEAR_BYTE | A.UNMAP_NOTIFY_SEND_EVENT, 9)
    print("mapped", v[33], table_flags(), flush=True)
    # exit without close(): the finalizer runs at interpreter exit
""")


def test_notifications_fire_when_the_process_exits(machine):
    ram = machine.alloc(4, "shared-ram")
    ram.buffer[PAGE_SIZE + 33] = 0x42
    out = subprocess.run([sys.executable, "-c", _CHILD, str(ram.fd)], pass_fds=[ram.fd],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == f"mapped {0x42} {PERMIT | READING | WRITING}"
    assert lines[1] == f"event 9 0 {PERMIT}"                  # byte cleared, all unmapped
    assert ram.buffer[PAGE_SIZE + 33] == 0


# --- D4 11: GRANT_COPY ---------------------------------------------------------------------------
def test_grant_copy_refusals_are_errnos(dev):
    buf = bytearray(8192)
    cases = [
        ([CopySegment(Local(buf), Local(buf, 100), 8)], errno.EINVAL),        # local -> local
        ([CopySegment(Foreign(1, 8, 4000), Local(buf), 200)], errno.EINVAL),  # crosses a page
        ([CopySegment(Local(buf), Foreign(1, 8, 4000), 97)], errno.EINVAL),
        ([CopySegment(Foreign(1, 8), Local(b"read-only"), 4)], errno.EFAULT),  # dest not writable
        ([CopySegment(Foreign(1, 8), Local(buf, 8190), 4)], errno.EFAULT),     # past the buffer
        ([CopySegment(Foreign(1, 8), Local(object()), 4)], errno.EFAULT),
        ([CopySegment(Foreign(1, 8), Local(buf), 4, flags=0)], errno.EINVAL),  # flags disagree
        ([CopySegment(Foreign(1, 8), Local(buf), 1 << 16)], errno.EFAULT),     # len is a u16
        ([CopySegment(Foreign(1 << 16, 8), Local(buf), 4)], errno.EFAULT),     # domid_t
        ([{"source": Foreign(1, 8), "dest": Local(buf)}], errno.EFAULT),       # no len
        ([42], errno.EFAULT),
        (None, errno.EFAULT),
    ]
    for segs, code in cases:
        assert err(dev.grant_copy, segs) == code, segs


def test_grant_copy_splits_at_local_page_boundaries_and_reports_per_segment(env, dev):
    _, guest = env
    page = bytearray(3 * PAGE_SIZE)
    base = G._address(page)
    start = PAGE_SIZE - (base % PAGE_SIZE) - 10        # 10 bytes before a page boundary
    src = bytearray(b"0123456789abcdefghij")
    segs = [CopySegment(Foreign(1, 8, 100), Local(page, start), 20),    # spans two pages
            CopySegment(Local(src), Foreign(1, 9, 4076), 20),
            CopySegment(Foreign(1, 4000), Local(page), 4),               # bad ref
            CopySegment(Foreign(1, 12), Local(None, 64), 0),             # len 0: no page
            CopySegment(Local(b"into an RO grant"), Foreign(1, 16), 4),
            {"source": Local(bytes(b"from bytes")), "dest": Foreign(1, 10, 7), "len": 10}]
    got = dev.grant_copy(segs)
    assert got == [OK, OK, A.GNTST_bad_gntref, OK, A.GNTST_general_error, OK]
    assert [s.status for s in segs[:5]] + [segs[5]["status"]] == got
    assert bytes(page[start:start + 20]) == b"\x03" * 20
    assert bytes(guest.page(3)[4076:]) == bytes(src)
    assert bytes(guest.page(4)[7:17]) == b"from bytes" and guest.page(10)[0] == 11
    assert all(guest.flags(r) & (READING | WRITING) == 0 for r in range(8, 17))


def test_grant_copy_ops_not_yet_issued_are_dropped_when_a_later_segment_is_refused(dev):
    buf = bytearray(64)
    segs = [CopySegment(Foreign(1, 8, k), Local(buf, k), 1) for k in range(17)]
    segs.append(CopySegment(Foreign(1, 8, 4095), Local(buf), 2))     # refused: crosses
    assert err(dev.grant_copy, segs) == errno.EINVAL
    assert bytes(buf[:17]) == b"\x03" * 16 + b"\x00"   # the first batch of 16 ran, not the 17th


# --- D4 13: dma-buf ------------------------------------------------------------------------------
def test_dmabuf_export_refusals(env, dev):
    _, guest = env
    both = A.GNTDEV_DMA_FLAG_WC | A.GNTDEV_DMA_FLAG_COHERENT
    assert err(dev.dmabuf_exp_from_refs, 1, [8], both) == errno.EINVAL
    assert err(dev.dmabuf_exp_from_refs, 1, []) == errno.EINVAL
    assert err(dev.dmabuf_exp_from_refs, 1, None) == errno.EFAULT
    assert err(dev.dmabuf_exp_from_refs, 1, [8, 512]) == errno.EINVAL
    assert guest.flags(8) == PERMIT                     # the grant that mapped was undone
    assert dev.map_grant_refs([(1, 8)]) == 0            # and its index freed
    assert err(dev.dmabuf_exp_wait_released, 1234, 0) == errno.ENOENT
    assert err(dev.dmabuf_imp_release, 1234) == errno.ENOENT


def test_dmabuf_export_here_is_a_copy_kept_coherent_by_sync(env, dev):
    _, guest = env
    fd = dev.dmabuf_exp_from_refs(1, [8, 9])
    try:
        assert os.pread(fd, 2, PAGE_SIZE - 1) == b"\x03\x04"
        assert guest.flags(8) == guest.flags(9) == PERMIT | READING | WRITING
        assert os.fstat(fd).st_size == 2 * PAGE_SIZE
        with pytest.raises(OSError):
            os.ftruncate(fd, PAGE_SIZE)                 # sealed: the size is the buffer's
        guest.page(2)[0] = 0xAA
        assert os.pread(fd, 1, 0) == b"\x03"            # a copy ...
        dev.dmabuf_sync(fd, G.DMA_BUF_SYNC_START | G.DMA_BUF_SYNC_READ)
        assert os.pread(fd, 1, 0) == b"\xaa"            # ... refreshed at START|READ
        os.pwrite(fd, b"dma", PAGE_SIZE)
        assert bytes(guest.page(3)[:3]) == b"\x04" * 3
        dev.dmabuf_sync(fd, G.DMA_BUF_SYNC_END | G.DMA_BUF_SYNC_WRITE)
        assert bytes(guest.page(3)[:3]) == b"dma"       # written back at END|WRITE
        assert err(dev.dmabuf_sync, fd, 0) == errno.EINVAL
        assert err(dev.dmabuf_sync, fd, 0x8 | G.DMA_BUF_SYNC_READ) == errno.EINVAL
        assert err(dev.dmabuf_sync, fd + 1000, G.DMA_BUF_SYNC_READ) == errno.ENOENT
    finally:
        os.close(fd)


def test_dmabuf_export_is_released_when_every_fd_and_mapping_is_gone(env, dev):
    _, guest = env
    fd = dev.dmabuf_exp_from_refs(1, [8])
    assert err(dev.dmabuf_exp_wait_released, fd, 0) == errno.ETIMEDOUT
    m = mmap.mmap(fd, PAGE_SIZE)
    dup = os.dup(fd)
    os.close(fd)
    assert err(dev.dmabuf_exp_wait_released, fd, 5) == errno.ETIMEDOUT   # dup and mapping
    os.close(dup)
    assert err(dev.dmabuf_exp_wait_released, fd, 5) == errno.ETIMEDOUT   # the mapping
    assert m[0] == 3 and guest.flags(8) & READING
    m.close()
    dev.dmabuf_exp_wait_released(fd, 1000)
    assert guest.flags(8) == PERMIT
    assert err(dev.dmabuf_exp_wait_released, fd, 0) == errno.ENOENT


def test_another_process_can_map_the_exported_buffer(env, dev):
    _, guest = env
    fd = dev.dmabuf_exp_from_refs(1, [8, 9])
    a, b = socket.socketpair()
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import mmap, os, socket, sys
        s = socket.socket(fileno=int(sys.argv[1]))
        _, fds, _, _ = socket.recv_fds(s, 1, 1)
        m = mmap.mmap(fds[0], 2 * 4096)
        os.close(fds[0])
        s.send(bytes([m[0], m[4096]]))
        s.recv(1)
        m.close()
    """), str(b.fileno())], pass_fds=[b.fileno()])
    b.close()
    socket.send_fds(a, [b"x"], [fd])
    os.close(fd)
    assert a.recv(2) == b"\x03\x04"
    assert err(dev.dmabuf_exp_wait_released, fd, 10) == errno.ETIMEDOUT   # the child maps it
    a.send(b"k")
    assert child.wait(timeout=30) == 0
    dev.dmabuf_exp_wait_released(fd, 5000)
    assert guest.flags(8) == guest.flags(9) == PERMIT
    a.close()


def test_an_export_takes_an_index_but_is_no_map_for_the_map_ioctls(env, dev):
    _, guest = env
    fd = dev.dmabuf_exp_from_refs(1, [8, 9])
    try:
        assert dev.map_grant_refs([(1, 10)]) == 2 * PAGE_SIZE
        assert err(dev.unmap_grant_ref, 0) == errno.ENOENT
        assert err(dev.mmap, 0, 2) == errno.EINVAL
        assert err(dev.set_unmap_notify, 0, CLEAR) == errno.ENOENT
    finally:
        os.close(fd)
    dev.dmabuf_exp_wait_released(fd, 1000)
    assert dev.map_grant_refs([(1, 10)]) == 0 and guest.flags(8) == PERMIT


def test_close_ends_a_copy_export_and_leaves_its_fd_readable(env):
    svc, guest = env
    d = Gntdev(svc)
    fd = d.dmabuf_exp_from_refs(1, [8])
    d.close()
    assert guest.flags(8) == PERMIT
    assert os.pread(fd, 1, 0) == b"\x03"
    os.close(fd)


def test_udmabuf_takes_machine_frames_and_refuses_unsealed_memfds(env, machine):
    _, guest = env
    frames = [guest.resolve(2), guest.resolve(3)]
    # MachineMemory's memfds carry F_SEAL_SHRINK: adjacent pages merge into one item
    assert G.udmabuf_items(frames) == [(frames[0].fd, frames[0].offset, 2 * PAGE_SIZE)]
    plain = os.memfd_create("plain")
    try:
        os.ftruncate(plain, PAGE_SIZE)
        assert G.udmabuf_items([Frame(plain, 0, 0, 0)]) is None
    finally:
        os.close(plain)
    fd = os.memfd_create("sealed", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 4 * PAGE_SIZE)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        fs = [Frame(fd, o * PAGE_SIZE, 0, 0) for o in (0, 1, 3)]
        assert G.udmabuf_items(fs) == [(fd, 0, 2 * PAGE_SIZE), (fd, 3 * PAGE_SIZE, PAGE_SIZE)]
        if not os.path.exists("/dev/udmabuf"):
            assert err(G.udmabuf_create_list, G.udmabuf_items(fs)) == errno.ENOENT
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        assert G.udmabuf_items(fs) is None              # udmabuf refuses write seals
    finally:
        os.close(fd)


def test_dmabuf_import_grants_the_buffers_own_pages(env, dev, machine):
    svc, _ = env
    ranges = machine.live_ranges
    fd = os.memfd_create("imported")
    os.ftruncate(fd, 2 * PAGE_SIZE)
    os.pwrite(fd, b"first", 0)
    os.pwrite(fd, b"second", PAGE_SIZE)
    refs = dev.dmabuf_imp_to_refs(fd, 2, 0)            # granted to domain 0: map them back
    assert all(r >= A.NR_RESERVED_ENTRIES for r in refs) and len(set(refs)) == 2
    host = svc.host
    assert [A.GRANT_ENTRY_V1.unpack_from(host.frames.buffer, 8 * r)[:2] for r in refs] == \
        [(PERMIT, 0)] * 2                               # writable, to domain 0
    with Gntdev(svc) as user:
        i = user.map_grant_refs([(0, r) for r in refs])
        v = user.mmap(i, 2, writable=True)
        assert bytes(v[:5]) == b"first" and bytes(v[PAGE_SIZE:PAGE_SIZE + 6]) == b"second"
        v[100:104] = b"zero"
        assert os.pread(fd, 4, 100) == b"zero"          # zero copy: the memfd's own page
        dev.dmabuf_imp_release(fd)                     # the peer still maps: deferred
        assert host_granter(svc).deferred == 2
        flags = A.GRANT_ENTRY_V1.unpack_from(host.frames.buffer, 8 * refs[0])[0]
        assert flags == PERMIT | READING | WRITING
    host_granter(svc).retry_deferred()
    assert host_granter(svc).deferred == 0
    assert A.GRANT_ENTRY_V1.unpack_from(host.frames.buffer, 8 * refs[0])[0] == 0
    assert not host.adopted and machine.live_ranges == ranges
    assert err(dev.dmabuf_imp_release, fd) == errno.ENOENT
    os.close(fd)


def test_dmabuf_import_refusals(dev):
    fd = os.memfd_create("three-pages")
    os.ftruncate(fd, 3 * PAGE_SIZE)
    try:
        assert err(dev.dmabuf_imp_to_refs, fd, 2, 1) == errno.EINVAL       # size mismatch
        assert err(dev.dmabuf_imp_to_refs, fd, 0, 1) == errno.EINVAL
        assert err(dev.dmabuf_imp_to_refs, fd, A.GNTDEV_LIMIT + 1, 1) == errno.EINVAL
        r, w = os.pipe()
        assert err(dev.dmabuf_imp_to_refs, r, 1, 1) == errno.EINVAL        # not a buffer
        os.close(r)
        os.close(w)
        assert err(dev.dmabuf_imp_to_refs, r, 1, 1) == errno.EBADF
        assert err(dev.dmabuf_imp_to_refs, -1, 1, 1) == errno.EBADF
    finally:
        os.close(fd)


# --- lifetime ------------------------------------------------------------------------------------
def test_a_closed_gntdev_is_ebadf_and_close_is_idempotent(env):
    d = Gntdev(env[0])
    d.close()
    d.close()
    assert d.closed
    assert err(d.map_grant_refs, [(1, 8)]) == errno.EBADF


def test_1000_map_mmap_unmap_cycles_leak_no_fd_mapping_or_frame(env, machine):
    svc, guest = env

    def census():
        gc.collect()
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
        return (len(os.listdir("/proc/self/fd")), len(lines),
                sum("paravm:" in line for line in lines), machine.live_ranges)

    def cycle(d, k):
        i = d.map_grant_refs([(1, 8 + k % 4), (1, 12)])
        v = d.mmap(i, 2, writable=bool(k & 1))
        assert v[0] == 3 + k % 4 and v[PAGE_SIZE] == 7
        if k % 3:
            d.munmap(v)
            d.unmap_grant_ref(i, 2)
        else:
            d.unmap_grant_ref(i)
            d.munmap(v)

    with Gntdev(svc) as d:
        for k in range(20):                            # warm up allocator arenas
            cycle(d, k)
        before = census()
        for k in range(1000):
            cycle(d, k)
        after = census()
    fds, vmas, memfd_maps, ranges = before
    assert after[0] == fds and after[2] == memfd_maps and after[3] == ranges
    assert after[1] <= vmas + 4                        # a leak would be 1000s of VMAs
    assert all(guest.flags(r) == PERMIT for r in range(8, 13))


_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
                  st.integers(-2, 70000), st.text(max_size=3), st.floats(allow_nan=False),
                  st.lists(st.integers(-3, 1 << 33), max_size=3),
                  st.lists(st.tuples(st.integers(-3, 1 << 33), st.integers(-3, 600)), max_size=3))
_CALLS = {"map_grant_refs": 1, "mmap": 4, "munmap": 1, "unmap_grant_ref": 2,
          "get_offset_for_vaddr": 1, "set_max_grants": 1, "set_unmap_notify": 3,
          "grant_copy": 1, "dmabuf_exp_from_refs": 3, "dmabuf_exp_wait_released": 2,
          "dmabuf_imp_to_refs": 3, "dmabuf_imp_release": 1, "dmabuf_sync": 2}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(_CALLS)), args=st.lists(_JUNK, min_size=4, max_size=4))
def test_bad_arguments_raise_only_oserror(name, args):
    machine = MachineMemory()
    svc = GrantService(machine, [], evtchn=FakeEvtchn())
    guest = Guest(svc, machine, pages=4)
    guest.grant(8, 2)
    d = Gntdev(svc)
    try:
        if name == "dmabuf_exp_wait_released":
            args[1] = 0                                 # never sleep
        d.map_grant_refs([(1, 8)])
        getattr(d, name)(*args[:_CALLS[name]])
    except OSError:
        pass
    finally:
        d.close()
        svc.close()
        machine.close()
