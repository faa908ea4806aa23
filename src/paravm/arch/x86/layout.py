"""The guest-physical layout the VMM builds before the first instruction.

Shared with the guest SDK (``guest/include/paravm/abi.h`` carries the same
numbers; ``tests/unit/test_guest_abi.py`` checks that both agree).

::

    0x000000  null page (not present: a NULL dereference faults)
    0x001000  PML4
    0x002000  PDPT
    0x003000  4 page directories, 2 MiB pages, identity map of 0..4 GiB
    0x007000  page table of the first 2 MiB (4 KiB pages, per-page U/S bits)
    0x008000  GDT (null, kernel code/data, user data/code, one TSS per vCPU)
    0x009000  IDT (256 gates into the ring-0 stub)
    0x00A000  boot info page (user read-only)
    0x010000  per vCPU i at 0x10000 + i*0x6000:
                +0x0000 TSS with a full I/O bitmap (3 pages, supervisor)
                +0x3000 ring-0 stack (2 pages, supervisor)
                +0x5000 vCPU page (user read/write; the vCPU's GS base)
    0x100000  RESERVED_END: guest images load from here
    ...       image, then heap
    RAM end - (i+1)*STACK_SIZE .. RAM end - i*STACK_SIZE: vCPU i's ring-3 stack
    0xC0000000 IVC info page, then IVC shared areas (services/ivc)
    0xF0000000 Xen shared_info page (services/evtchn)
    0xF0010000 grant table frames, up to 256 (services/grant)
    0xF1000000 read-write grant window, up to 16 MiB (services/grant)
    0xF2000000 read-only grant window (KVM_MEM_READONLY), up to 16 MiB
    0xF4000000 PVZ firmware heap carve-out slices (services/pvz)
    0xF8000000 PVZ GPU heap carve-out slices
    0xFC000000 PVZ GPU registers (MMIO, devices/pvzgpu)
    0xFCC00000 mediated GPU OpRegion, 8 KiB read-only (services/mpt, devices/mgpu)
    0xFD000000 mediated GPU registers (a trap area: MMIO, no memslot)
    0xFEE00000 local APIC (in-kernel; no memslot)
"""

from __future__ import annotations

PAGE = 0x1000
PML4 = 0x1000
PDPT = 0x2000
PD = 0x3000            # 4 pages
PT_LOW = 0x7000        # the first 2 MiB, 4 KiB pages
GDT = 0x8000
IDT = 0x9000
BOOT_INFO = 0xA000
VCPU_AREA = 0x10000
VCPU_AREA_STRIDE = 0x6000
VCPU_TSS_OFF = 0x0000
VCPU_STACK0_OFF = 0x3000
VCPU_STACK0_TOP_OFF = 0x5000
VCPU_PAGE_OFF = 0x5000
RESERVED_END = 0x100000

from ...limits import VCPUS_MAX as MAX_VCPUS  # noqa: E402
STACK_SIZE = 128 * 1024   # ring-3 stack per vCPU, bytes
IDENTITY_MAP_END = 4 << 30
LAPIC_BASE = 0xFEE00000
KVM_TSS_ADDR = 0xFFFBD000  # 3 pages KVM needs for real-mode emulation (never used)

# Xen services (specs/grant-mpt.md part D)
XEN_SHARED_INFO_GPA = 0xF0000000
GRANT_TABLE_GPA = 0xF0010000
GRANT_TABLE_MAX_FRAMES = 256
GRANT_WINDOW_GPA = 0xF1000000
GRANT_WINDOW_RO_GPA = 0xF2000000
GRANT_WINDOW_MAX_PAGES = 4096
VEC_EVTCHN = 0xE0        # event channel upcall (lguest has 0xC0..0xDF, IVC 0x40..0xBF)

# PVZ (specs/ivc-lguest-pvz.md part C): host carve-outs are mapped into each
# guest one OSID slice at a time, at base + OSID * slice size, so a guest's
# slice has the GPA the host reports for it.
PVZ_FW_CARVEOUT_GPA = 0xF4000000    # 8 slices of up to PVZ_HEAP_MAX
PVZ_GPU_CARVEOUT_GPA = 0xF8000000   # 8 slices of up to PVZ_HEAP_MAX
PVZ_HEAP_MAX = 8 << 20
PVZ_REGS_GPA = 0xFC000000           # the GPU's register bank (MMIO, no memslot)
VEC_PVZ_GPU = 0xE1

# Mediated pass-through (specs/grant-mpt.md part E; services/mpt, devices/mgpu.py).
MPT_OPREGION_GPA = 0xFCC00000      # set_opregion maps it here, read-only
MGPU_REGS_GPA = 0xFD000000
VEC_MGPU = 0xE2

# GDT selectors
SEL_KERNEL_CS = 0x08
SEL_KERNEL_DS = 0x10
SEL_USER_DS = 0x18 | 3
SEL_USER_CS = 0x20 | 3
SEL_TSS0 = 0x30          # + 16 * vCPU index

# TSS (64-bit)
TSS_RSP0 = 4
TSS_IOMAP_BASE = 102
TSS_HEADER = 104
IO_BITMAP_BYTES = 65536 // 8
TSS_LIMIT = TSS_HEADER + IO_BITMAP_BYTES  # inclusive limit: covers the 0xFF end byte

# Boot info page (struct pv_boot_info in guest/include/paravm/abi.h)
BI_MAGIC = 0x49425650    # "PVBI"
BI_VERSION = 1
BI_OFF_MAGIC = 0x00
BI_OFF_VERSION = 0x04
BI_OFF_DOMID = 0x08
BI_OFF_NR_VCPUS = 0x0C
BI_OFF_RAM_SIZE = 0x10
BI_OFF_HEAP_START = 0x18
BI_OFF_HEAP_END = 0x20
BI_OFF_TSC_KHZ = 0x28
BI_OFF_ARGC = 0x30
BI_OFF_ARGS_LEN = 0x34
BI_OFF_NAME = 0x38
BI_NAME_LEN = 40
BI_OFF_LGUEST_DESCS = 0x60   # GPA of the lguest descriptor page, 0: no devices
BI_OFF_XEN_SHARED_INFO = 0x68  # GPA of the Xen shared_info page, 0: no Xen services
BI_OFF_GRANT_WINDOW = 0x70     # GPA of the read-write grant window
BI_OFF_GRANT_WINDOW_RO = 0x78  # GPA of the read-only grant window
BI_OFF_GRANT_WINDOW_PAGES = 0x80   # u32: pages in each window
BI_OFF_EVTCHN_VECTOR = 0x84    # u32: the event channel upcall vector
BI_OFF_PVZ = 0x88              # u32: 1 if the domain has a PVZ connection
BI_OFF_PVZ_FW_ORIGIN = 0x8C    # u32: PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_* of the FW heap
BI_OFF_PVZ_FW_HEAP_SIZE = 0x90  # u64: RGX_FIRMWARE_HEAP_SIZE, bytes
BI_OFF_MGPU = 0x98             # u32: 1 if the domain has an example mediated GPU
BI_OFF_MGPU_OPREGION = 0x9C    # u32: GPA of its OpRegion, 0: none
BI_OFF_ARGS = 0x100
BI_ARGS_MAX = 2048

# vCPU page (struct pv_vcpu_page)
VP_OFF_SELF = 0x00
VP_OFF_INDEX = 0x08
VP_OFF_APIC_ID = 0x0C
VP_OFF_PENDING = 0x10    # 4 x u64: vectors raised, cleared by ring 3

# Vectors
VEC_TIMER = 0x20         # the stub's block timeout
VEC_SMP = 0x21           # SMP start/stop kicks
VEC_USER_FIRST = 0x30    # free for services and programs
VEC_USER_LAST = 0xEF
VEC_SPURIOUS = 0xFF

# Image header section in SDK-built ELF files (struct pv_image_header)
IMAGE_SECTION = ".paravm_image"
IMAGE_MAGIC = 0x4D495650  # "PVIM"
IMAGE_VERSION = 1
IMAGE_VECTOR_STRIDE = 16


def vcpu_area(index: int) -> int:
    return VCPU_AREA + index * VCPU_AREA_STRIDE


def vcpu_page(index: int) -> int:
    return vcpu_area(index) + VCPU_PAGE_OFF


def stack_top(ram_size: int, index: int) -> int:
    return ram_size - index * STACK_SIZE


def stacks_bottom(ram_size: int, nr_vcpus: int) -> int:
    """Lowest GPA of the ring-3 stacks: the image and heap end below it."""
    return ram_size - nr_vcpus * STACK_SIZE


def msi_address(apic_id: int) -> int:
    """MSI address for physical destination *apic_id* (Intel SDM 10.11.1)."""
    return LAPIC_BASE | (apic_id << 12)
