"""Long-mode entry built by the VMM: no firmware, no real mode, no ring-0 boot code.

The VMM writes the page tables, GDT, per-vCPU TSS and IDT into the reserved
low megabyte (see :mod:`.layout`), then loads the segment and control
registers so that the first guest instruction already runs in 64-bit mode at
CPL 3.  Ring 0 belongs to the SDK's small stub, reached only through the IDT
(interrupts, exceptions and ``int3``): on our software-assisted KVM backend
ring-0 code is emulated instruction by instruction, so nothing ordinary runs
there.  Ring-3 port I/O is allowed by the TSS I/O bitmap (all ports open:
every access exits to the VMM, where an unknown port stops the domain with a
reason, as Solo5 hvt does).

Page permissions: the reserved area is supervisor-only except the boot info
page (user read-only) and each vCPU page (user read/write), so a stray ring-3
write cannot corrupt the IDT or the stub's stacks.
"""

from __future__ import annotations

import ctypes as C
import functools
import struct

from ...kvm import abi
from . import layout as L

# Page-table entry bits
PTE_P, PTE_RW, PTE_US, PTE_PS = 1, 2, 4, 0x80

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 0x10000, 0x80000000
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 0x20, 0x200, 0x400
EFER_SCE, EFER_LME, EFER_LMA = 0x1, 0x100, 0x400

GUEST_CR0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
GUEST_CR4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
GUEST_EFER = EFER_LME | EFER_LMA

# Exceptions that push an error code (Intel SDM vol. 3, table 6-1).
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
EXCEPTION_NAMES = {
    0: "#DE divide error", 1: "#DB debug", 2: "NMI", 3: "#BP breakpoint", 4: "#OF overflow",
    5: "#BR bound range", 6: "#UD invalid opcode", 7: "#NM device not available",
    8: "#DF double fault", 10: "#TS invalid TSS", 11: "#NP segment not present",
    12: "#SS stack fault", 13: "#GP general protection", 14: "#PF page fault",
    16: "#MF x87 error", 17: "#AC alignment check", 18: "#MC machine check",
    19: "#XM SIMD exception", 20: "#VE virtualization exception", 21: "#CP control protection",
}

_GDT_FIXED = (
    0,
    0x00AF9B000000FFFF,  # 0x08 kernel code, 64-bit, DPL 0
    0x00CF93000000FFFF,  # 0x10 kernel data, DPL 0
    0x00CFF3000000FFFF,  # 0x18 user data, DPL 3
    0x00AFFB000000FFFF,  # 0x20 user code, 64-bit, DPL 3
    0,
)


def _tss_descriptor(base: int, limit: int) -> bytes:
    """16-byte 64-bit available-TSS descriptor (type 9, present)."""
    low = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x89 << 40) \
        | (((limit >> 16) & 0xF) << 48) | (((base >> 24) & 0xFF) << 56)
    return struct.pack("<QQ", low, base >> 32)


def _idt_gate(handler: int, dpl: int) -> bytes:
    """16-byte interrupt gate (type 0xE: IF cleared on entry) to the kernel CS."""
    attr = 0x80 | (dpl << 5) | 0xE
    return struct.pack("<HHBBHII", handler & 0xFFFF, L.SEL_KERNEL_CS, 0, attr,
                       (handler >> 16) & 0xFFFF, handler >> 32, 0)


def build_page_tables(mem, nr_vcpus: int) -> None:
    """Identity map 0..4 GiB: 2 MiB pages, and 4 KiB pages with per-page
    permissions in the first 2 MiB."""
    mem.write(L.PML4, _page_tables(nr_vcpus))


@functools.lru_cache(maxsize=L.MAX_VCPUS)
def _page_tables(nr_vcpus: int) -> bytes:
    """The bytes of PML4 .. PT_LOW (contiguous), computed once per vCPU count."""
    out = bytearray(L.GDT - L.PML4)

    class _Buf:
        @staticmethod
        def write(gpa: int, data: bytes) -> None:
            out[gpa - L.PML4:gpa - L.PML4 + len(data)] = data

    mem = _Buf
    mem.write(L.PML4, struct.pack("<Q", L.PDPT | PTE_P | PTE_RW | PTE_US))
    mem.write(L.PDPT, struct.pack("<4Q", *((L.PD + i * L.PAGE) | PTE_P | PTE_RW | PTE_US
                                           for i in range(4))))
    big = [(i << 21) | PTE_P | PTE_RW | PTE_US | PTE_PS for i in range(2048)]
    big[0] = L.PT_LOW | PTE_P | PTE_RW | PTE_US
    # The local APIC belongs to the ring-0 stub: supervisor-only.
    big[L.LAPIC_BASE >> 21] &= ~PTE_US
    mem.write(L.PD, struct.pack("<2048Q", *big))
    small = [0] * 512
    supervisor = PTE_P | PTE_RW
    for gpa in (L.PML4, L.PDPT, L.PT_LOW, L.GDT, L.IDT):
        small[gpa >> 12] = gpa | supervisor
    for i in range(4):
        small[(L.PD >> 12) + i] = (L.PD + i * L.PAGE) | supervisor
    small[L.BOOT_INFO >> 12] = L.BOOT_INFO | PTE_P | PTE_US
    for v in range(nr_vcpus):
        base = L.vcpu_area(v)
        for off in range(0, L.VCPU_PAGE_OFF, L.PAGE):
            small[(base + off) >> 12] = (base + off) | supervisor
        page = L.vcpu_page(v)
        small[page >> 12] = page | PTE_P | PTE_RW | PTE_US
    for gpa in range(L.RESERVED_END, 2 << 20, L.PAGE):
        small[gpa >> 12] = gpa | PTE_P | PTE_RW | PTE_US
    mem.write(L.PT_LOW, struct.pack("<512Q", *small))
    return bytes(out)


def build_gdt_tss(mem, nr_vcpus: int) -> None:
    """The GDT, and per vCPU its TSS (RSP0 = its ring-0 stack; the I/O bitmap
    is all zero, so every port is allowed, then the 0xFF end byte) and the
    head of its vCPU page.  RAM is fresh (zero), so only non-zero bytes are
    written."""
    gdt = bytearray(struct.pack(f"<{len(_GDT_FIXED)}Q", *_GDT_FIXED))
    for v in range(nr_vcpus):
        gdt += _tss_descriptor(L.vcpu_area(v) + L.VCPU_TSS_OFF, L.TSS_LIMIT)
        tss = L.vcpu_area(v) + L.VCPU_TSS_OFF
        mem.write(tss + L.TSS_RSP0, struct.pack("<Q", L.vcpu_area(v) + L.VCPU_STACK0_TOP_OFF))
        mem.write(tss + L.TSS_IOMAP_BASE, struct.pack("<H", L.TSS_HEADER))
        mem.write(tss + L.TSS_LIMIT, b"\xff")
        page = L.vcpu_page(v)
        mem.write(page + L.VP_OFF_SELF, struct.pack("<QII", page, v, v))
    mem.write(L.GDT, gdt)


def build_idt(mem, vectors: int | None) -> int:
    """Fill the IDT from the image's vector table (256 entries *vectors* +
    16*i); ``int3`` is the only gate ring 3 may use.  Returns the IDT limit
    (0 when the image has no stub: every exception then triple-faults)."""
    if vectors is None:
        return 0
    idt = _idt(vectors)
    mem.write(L.IDT, idt)
    return len(idt) - 1


@functools.lru_cache(maxsize=16)
def _idt(vectors: int) -> bytes:
    return b"".join(_idt_gate(vectors + v * L.IMAGE_VECTOR_STRIDE, 3 if v == 3 else 0)
                    for v in range(256))


def write_boot_info(mem, *, domid: int, name: str, nr_vcpus: int, ram_size: int,
                    heap_start: int, tsc_khz: int, args: tuple[str, ...]) -> None:
    packed = b"".join(a.encode() + b"\0" for a in args)
    if len(packed) > L.BI_ARGS_MAX:
        raise ValueError(f"args pack to {len(packed)} bytes, more than {L.BI_ARGS_MAX}")
    header = struct.pack("<IIIIQQQQII", L.BI_MAGIC, L.BI_VERSION, domid, nr_vcpus, ram_size,
                         heap_start, L.stacks_bottom(ram_size, nr_vcpus), tsc_khz,
                         len(args), len(packed))
    mem.write(L.BOOT_INFO, header)
    mem.write(L.BOOT_INFO + L.BI_OFF_NAME, name.encode()[:L.BI_NAME_LEN - 1].ljust(L.BI_NAME_LEN, b"\0"))
    mem.write(L.BOOT_INFO + L.BI_OFF_ARGS, packed)


def _segment(seg: abi.kvm_segment, selector: int, *, code: bool, dpl: int) -> None:
    seg.base, seg.limit, seg.selector = 0, 0xFFFFFFFF, selector
    seg.type = 0xB if code else 0x3
    seg.present, seg.dpl, seg.s, seg.g, seg.avl, seg.unusable = 1, dpl, 1, 1, 0, 0
    seg.l, seg.db = (1, 0) if code else (0, 1)


def initial_sregs(sregs: abi.kvm_sregs, index: int, idt_limit: int) -> None:
    """Set *sregs* (as read from the vCPU) for 64-bit mode at CPL 3."""
    _segment(sregs.cs, L.SEL_USER_CS, code=True, dpl=3)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _segment(seg, L.SEL_USER_DS, code=False, dpl=3)
    sregs.gs.base = L.vcpu_page(index)
    tr = sregs.tr
    tr.base, tr.limit, tr.selector = L.vcpu_area(index) + L.VCPU_TSS_OFF, L.TSS_LIMIT, \
        L.SEL_TSS0 + 16 * index
    tr.type, tr.present, tr.dpl, tr.s, tr.l, tr.db, tr.g, tr.unusable = 0xB, 1, 0, 0, 0, 0, 0, 0
    sregs.ldt.selector, sregs.ldt.present, sregs.ldt.unusable = 0, 0, 1
    sregs.gdt.base, sregs.gdt.limit = L.GDT, 8 * len(_GDT_FIXED) + 16 * L.MAX_VCPUS - 1
    sregs.idt.base, sregs.idt.limit = L.IDT, idt_limit
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = GUEST_CR0, L.PML4, GUEST_CR4, GUEST_EFER
    sregs.apic_base = L.LAPIC_BASE | 0x800 | (0x100 if index == 0 else 0)


def initial_regs(regs: abi.kvm_regs, index: int, entry: int, ram_size: int) -> None:
    """rip = entry, rsp = top of this vCPU's stack, rdi = vCPU index,
    rsi = boot info GPA, RFLAGS.IF = 0: ring 3 is never interrupted, so an
    interrupt costs no emulated ring-0 entry while the guest computes; it is
    taken when the vCPU waits in the stub (``sti; hlt``)."""
    for name, _ in abi.kvm_regs._fields_:
        setattr(regs, name, 0)
    regs.rip, regs.rsp, regs.rflags = entry, L.stack_top(ram_size, index), 0x2
    regs.rdi, regs.rsi = index, L.BOOT_INFO


def vcpu_cpuid(supported: abi.kvm_cpuid2, apic_id: int) -> abi.kvm_cpuid2:
    """The host-supported CPUID with this vCPU's APIC ID in leaves 1, 0xB, 0x1F."""
    for i in range(supported.nent):
        e = supported.entries[i]
        if e.function == 1:
            e.ebx = (e.ebx & 0x00FFFFFF) | (apic_id << 24)
            e.ecx &= ~(1 << 27)  # OSXSAVE follows CR4, which we leave clear
        elif e.function in (0xB, 0x1F):
            e.edx = apic_id
    return supported


# Local APIC register offsets (Intel SDM vol. 3, table 10-1)
APIC_ID, APIC_TPR, APIC_SVR = 0x20, 0x80, 0xF0
APIC_LVT_TIMER, APIC_LVT_LINT0, APIC_LVT_LINT1, APIC_LVT_ERROR = 0x320, 0x350, 0x360, 0x370
APIC_LVT_MASKED = 1 << 16


def init_lapic(state: abi.kvm_lapic_state) -> None:
    """Software-enable the LAPIC (spurious vector 0xFF), TPR 0, LVTs masked."""
    raw = bytearray(bytes(state.regs))

    def put(off: int, value: int) -> None:
        struct.pack_into("<I", raw, off, value)

    put(APIC_TPR, 0)
    put(APIC_SVR, 0x100 | L.VEC_SPURIOUS)
    for off in (APIC_LVT_TIMER, APIC_LVT_LINT0, APIC_LVT_LINT1, APIC_LVT_ERROR):
        put(off, APIC_LVT_MASKED)
    C.memmove(state.regs, bytes(raw), len(raw))
