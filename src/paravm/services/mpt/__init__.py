"""GVT-g's mediated pass-through services (the MPT ops) over KVM: docs/mpt.md;
specs/grant-mpt.md part E.

:mod:`.abi` has the numbers (errnos, the invalid-address marker, OpRegion
and MSI-capability constants); :mod:`.service` the operations.
"""

from .service import MptService

__all__ = ["MptService"]
