"""Machine frames (memfd-backed) and GuestMemory: GPA -> bytes, bounds-checked."""

from .frames import PAGE_SHIFT, PAGE_SIZE, FrameRange, MachineMemory
from .guest import GFN, GPA, GuestMemory, GuestMemoryError, Region

__all__ = ["PAGE_SHIFT", "PAGE_SIZE", "FrameRange", "MachineMemory", "GFN", "GPA",
           "GuestMemory", "GuestMemoryError", "Region"]
