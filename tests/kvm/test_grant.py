"""Grant tables with KVM: two guests sharing pages through grants, XTF-style hostile
calls, a mapper that crashes, a granter that dies while mapped, and the host mapping a
guest's grant through gntdev.

The guest is tests/guests/grant.c (its modes and the granter/mapper script are at
its top).  Guests synchronise through words in the shared page; the host through
console lines.  Waits are for a positive signal, never a fixed sleep."""

from __future__ import annotations

import re

import pytest

import paravm
from paravm.services.grant import abi as A

from guest_manifest import guests_manifest, wait_console

pytestmark = pytest.mark.kvm

EBUSY, EINVAL, ENOSPC, ENODEV, EFAULT, ENOSYS = 16, 22, 28, 19, 14, 38


@pytest.fixture(scope="module")
def grant_elf(test_guests):
    return test_guests / "grant.elf"


def values(text):
    """NAME=VALUE lines -> {name: value string}."""
    return dict(re.findall(r"^(\w+)=(\S+)$", text, re.M))


def test_two_guests_share_pages_rw_and_ro_and_copy(tmp_path, grant_elf):
    m = guests_manifest(tmp_path, grant_elf, [("a", ["granter", "2"]), ("b", ["mapper", "1"])])
    with paravm.Hypervisor(output=None) as hv:
        a, b = hv.create_from_manifest(m)
        a.start()
        wait_console(a, "granted 8 9")          # the mapper starts once the refs exist
        b.start()
        assert hv.wait_all(60) is not None, (a.console.text, b.console.text)
        ta, tb = a.console.text, b.console.text
        assert a.result.status == 0 and b.result.status == 0, (ta, tb)
        # after the run: A's refs revoked, nothing pinned, B holds no mapping
        assert not hv.grant.table_of("a").active and not hv.grant.table_of("b").maptrack
        # each of the 65 writes to the read-only window exited and was dropped
        assert b.stats()["exits"].get("MMIO_WRITE") == 65
    assert "reads: 1 1" in tb                                 # A's bytes, both windows
    assert f"rw map of ro grant: {A.GNTST_general_error}" in tb
    assert "in use: 0x18 0x8" in ta                           # reading|writing, reading
    assert f"busy: -{EBUSY} -{EBUSY}" in ta                   # end_foreign_access while mapped
    assert "ro write discarded: 1" in tb and "ro page intact: 1" in ta
    assert f"copy: 0 0 {A.GNTST_general_error} {A.GNTST_bad_gntref} " \
           f"{A.GNTST_permission_denied}, bytes 1" in tb
    assert "copied in: 'copied by B'" in ta
    assert "revoked: 0 0, flags 0 0" in ta
    assert f"unmap: 0 0, again {A.GNTST_bad_handle}" in tb


def test_xtf_style_hostile_calls_from_a_guest(tmp_path, grant_elf):
    m = guests_manifest(tmp_path, grant_elf, [("h", ["hostile"])],
                            extra="[domain.xen]\nmax_grant_frames = 2\ngrant_window_pages = 16")
    with paravm.Hypervisor(output=None) as hv:
        (h,) = hv.create_from_manifest(m)
        hv.start_all()
        r = h.wait(30)
        text = h.console.text
    assert r is not None and r.status == 0 and "hostile done" in text, text
    v = values(text)
    expect = {
        "frames": 2, "max_frames": 2,
        "self_ref": 8, "self_map": A.GNTST_okay, "self_read": 1, "self_write_seen": 1,
        "self_flags": A.GTF_reading | A.GTF_writing, "self_end_busy": -EBUSY,
        "xsa316_rc": 0, "xsa316_status": A.GNTST_general_error, "wrong_flags_after": 0,
        "no_host_no_device": A.GNTST_bad_gntref, "device_map": A.GNTST_general_error,
        "ref_past_table": A.GNTST_bad_gntref, "ref_huge": A.GNTST_bad_gntref,
        "unknown_dom": A.GNTST_bad_domain, "outside_window": A.GNTST_bad_virt_addr,
        "past_window": A.GNTST_bad_virt_addr, "misaligned": A.GNTST_bad_virt_addr,
        "occupied": A.GNTST_bad_virt_addr, "ro_into_rw_window": A.GNTST_bad_virt_addr,
        "reserved_ref": A.GNTST_general_error,
        "batch_rc": 0, "batch": f"0,{A.GNTST_general_error},0", "batch_ro_read": 1,
        "batch_unmap_rc": 0, "batch_unmap": "0,0",
        "copy_rc": 0, "copy": f"{A.GNTST_permission_denied},0", "copy_bytes": 1,
        "bad_uop": -EFAULT, "cmd_high_bits": -EINVAL, "dump_table": -ENOSYS,
        "set_version_2": -ENOSYS,
        "unmap": 0, "double_unmap": A.GNTST_bad_handle, "self_end_after": 0,
        "end_reserved": -EINVAL,
    }
    assert {k: v.get(k) for k in expect} == {k: str(x) for k, x in expect.items()}


def test_refs_run_out_with_enospc_and_are_reused(tmp_path, grant_elf):
    m = guests_manifest(tmp_path, grant_elf, [("f", ["full"])],
                            extra="[domain.xen]\nmax_grant_frames = 1")
    with paravm.Hypervisor(output=None) as hv:
        (f,) = hv.create_from_manifest(m)
        hv.start_all()
        r = f.wait(30)
    v = values(f.console.text)
    assert r.status == 0, f.console.text
    assert (v["refs"], v["granted"], v["first"], v["last"]) == ("512", "504", "8", "511")
    assert v["when_full"] == str(-ENOSPC)
    assert v["after_free"] == "100" and v["gfn_too_big"] == str(-EINVAL)


def test_without_xen_services_init_is_enodev(tmp_path, grant_elf):
    m = guests_manifest(tmp_path, grant_elf, [("n", ["noxen"])], extra="")
    with paravm.Hypervisor(output=None) as hv:
        (n,) = hv.create_from_manifest(m)
        hv.start_all()
        assert n.wait(30).status == 0
    assert f"init=-{ENODEV} grant=-{ENODEV}" in n.console.text


def test_a_crashing_mapper_leaves_the_granter_whole(tmp_path, grant_elf):
    m = guests_manifest(tmp_path, grant_elf, [("a", ["survivor", "2"]), ("b", ["crasher", "1"])])
    with paravm.Hypervisor(output=None) as hv:
        a, b = hv.create_from_manifest(m)
        a.start()
        wait_console(a, "granted 8")
        b.start()
        rb = b.wait(30)
        assert rb is not None and rb.how == "crashed", (rb, b.console.text)
        ra = a.wait(30)
        assert ra is not None and ra.status == 0, a.console.text
        assert not hv.grant.table_of("a").active
    assert "crashing with the grant mapped" in b.console.text
    assert "mark seen" in a.console.text
    assert "revoked after the mapper died: 0, flags 0" in a.console.text


def test_the_host_maps_a_guest_grant_through_gntdev(tmp_path, grant_elf):
    from paravm.services.grant.gntdev import Gntdev
    m = guests_manifest(tmp_path, grant_elf, [("g", ["host"])])
    with paravm.Hypervisor(output=None) as hv:
        (g,) = hv.create_from_manifest(m)
        hv.start_all()
        wait_console(g, "granted 8")
        with Gntdev(hv.grant) as gd:
            index = gd.map_grant_refs([(1, 8)])
            view = gd.mmap(index, 1, writable=True)
            assert bytes(view[4:]) == bytes((0x40 + i * 7) & 0xFF for i in range(4, 4096))
            entry = hv.grant.table_of("g").entry(8)
            assert entry[0] == A.GTF_permit_access | A.GTF_reading | A.GTF_writing
            view[8:24] = b"hello from dom0\0"
            view[0:4] = (0x484F5354).to_bytes(4, "little")        # "HOST": the guest looks
            wait_console(g, f"end -{EBUSY}")
            gd.munmap(view)
            gd.unmap_grant_ref(index)
            assert g.wait(30).status == 0, g.console.text
    assert f"host wrote 'hello from dom0', flags 0x18, end -{EBUSY}" in g.console.text
    assert "revoked: 0" in g.console.text


def test_a_granter_that_exits_and_restarts_leaves_the_mapper_its_old_page(tmp_path, grant_elf):
    # Xen's zombie domain: the pages a dead granter's peers map stay theirs until
    # they unmap; new maps fail (bad_domain), and a new instance of the granter
    # has a fresh table (its ref 8 is invalid: general_error).
    m = guests_manifest(tmp_path, grant_elf, [("a", ["exiter", "2"]), ("b", ["zombie", "1"])])
    with paravm.Hypervisor(output=None) as hv:
        a, b = hv.create_from_manifest(m)
        a.start()
        wait_console(a, "granted 8")
        b.start()
        assert a.wait(30).status == 0, a.console.text
        wait_console(b, f"granter gone: {A.GNTST_bad_domain}")
        old = hv.grant.grants.tables[1]
        assert old.dying and old.active                    # pinned by b: not buried
        a2 = hv.restart("a", args=["idle"])
        rb = b.wait(30)
        assert rb is not None and rb.status == 0, b.console.text
        assert hv.grant.grants.tables[1] is hv.grant.table_of("a") is not old
        assert not old.active                              # b's unmap buried it
        a2.stop()
    tb = b.console.text
    assert "old page kept: 1" in tb
    assert f"new granter: {A.GNTST_general_error}" in tb
    assert "old page still: 1 'still mine'" in tb and "unmap: 0" in tb


def test_1000_guest_map_unmap_cycles_leak_no_memslot_mapping_or_fd(tmp_path, grant_elf):
    """Each cycle remaps one page of the grant window (no memslot ioctl); after
    1000 the VMM has the same memslots, fds and (about) the same VMAs."""
    import os

    def vmas():
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    m = guests_manifest(tmp_path, grant_elf, [("g", ["cycles", "1000"])])
    with paravm.Hypervisor(output=None) as hv:
        (g,) = hv.create_from_manifest(m)
        slots, fds, maps = len(g.vm._slots), len(os.listdir("/proc/self/fd")), vmas()
        hv.start_all()
        r = g.wait(120)
        assert r is not None and r.how == "exited" and r.status == 0, g.console.text
        assert "cycles 1000 ok" in g.console.text
        assert g.stats()["hypercalls"]["grant_table_op"] >= 2000
        assert len(g.vm._slots) == slots
        assert len(os.listdir("/proc/self/fd")) == fds
        assert vmas() <= maps + 4          # a leak would be ~1000 VMAs
