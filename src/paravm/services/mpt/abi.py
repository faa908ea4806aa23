"""Numbers of the GVT-g MPT interface (specs/grant-mpt.md part E).

The MPT returns Linux errno values, negated, as kvmgt does
(FreeBSDDesktop/kms-drm @ 27f91eb drivers/gpu/drm/i915/gvt/kvmgt.c); the
OpRegion and MSI-capability constants are i915's / mpt.h's of the same era
(@ ba35164).
"""

from __future__ import annotations

# Linux errno values (include/uapi/asm-generic/errno-base.h, errno.h).
ENOENT = 2
ESRCH = 3
ENXIO = 6
ENOMEM = 12
EFAULT = 14
EBUSY = 16
EEXIST = 17
ENODEV = 19
EINVAL = 22

INTEL_GVT_INVALID_ADDR = (1 << 64) - 1    # ~0UL: gfn_to_mfn / virt_to_mfn failure

HANDLE_MIN = 0x100        # kvmgt: a handle is valid when it has bits above 0xff

OPREGION_SIGNATURE = b"IntelGraphicsMem"  # the first 16 bytes
OPREGION_SIZE = 8 * 1024                  # i915's OPREGION_SIZE (two pages)

# mpt.h intel_gvt_hypervisor_inject_msi: the virtual MSI capability.
MSI_CAP_CONTROL = 2       # u16 at +2
MSI_CAP_ADDRESS = 4       # u32 at +4
MSI_CAP_DATA = 8          # u16 at +8
MSI_CONTROL_ENABLE = 0x1
MSI_CONTROL_UNSUPPORTED = 0xFFFE   # GENMASK(15, 1): multi-message, 64-bit, masking

MSI_ADDRESS_BASE = 0xFEE00000      # Intel SDM 10.11.1: 0xFEE, dest ID in bits 12..19
MSI_ADDRESS_MASK = 0xFFF00000
