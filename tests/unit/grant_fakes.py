"""Fakes shared by the grant unit tests (test_grant_table, test_gntdev,
test_gntalloc): an event channel service and a granter domain."""

from __future__ import annotations

from paravm.memory import PAGE_SIZE, atomic
from paravm.services.grant import abi as A
from paravm.services.grant.table import Frame, GrantTable


class FakeEvtchn:
    """What gntdev / gntalloc use of the event channel service: host ports 5
    and 6 are bound; each send is recorded with *at_send()* (if set), which
    is evaluated at the moment of sending."""

    def __init__(self):
        self.bound = {5, 6}
        self.sent = []
        self.at_send = None

    def host_port_bound(self, port):
        return port in self.bound

    def send(self, domid, port):
        self.sent.append((domid, port, self.at_send() if self.at_send else None))
        return 0


class GrantingDomain:
    """Domain *domid* with *ram_pages* of RAM (gfn 0 is a frame it does not
    own) and a one-frame grant table added to *grants*."""

    def __init__(self, machine, grants, domid, *, ram_pages=16, max_maptrack_frames=1024):
        self.domid = domid
        self.ram = machine.alloc(ram_pages, f"d{domid}.ram")
        self.table = GrantTable(domid, machine.alloc(1, f"d{domid}.gt"), self.resolve,
                                max_frames=1, max_maptrack_frames=max_maptrack_frames)
        grants.add(self.table)

    def resolve(self, gfn):
        if 1 <= gfn < self.ram.nframes:
            return Frame(self.ram.fd, gfn * PAGE_SIZE, self.ram.hva + gfn * PAGE_SIZE,
                         self.ram.mfn + gfn)
        return None

    def write_entry(self, ref, flags, domid, gfn):
        A.GRANT_ENTRY_V1.pack_into(self.table.frames.buffer, 8 * ref, flags, domid, gfn)

    def flags(self, ref):
        return A.GRANT_ENTRY_V1.unpack_from(self.table.frames.buffer, 8 * ref)[0]

    def end_access(self, ref) -> bool:
        """The granter's revoke (Linux gnttab_end_foreign_access_ref, v1)."""
        addr = self.table.entry_addr(ref)
        flags = atomic.load_u32(addr) & 0xFFFF
        while not flags & (A.GTF_reading | A.GTF_writing):
            old = atomic.cmpxchg(addr, 2, flags, 0)
            if old == flags:
                return True
            flags = old
        return False

    def page(self, gfn):
        return self.ram.buffer[gfn * PAGE_SIZE:(gfn + 1) * PAGE_SIZE]
