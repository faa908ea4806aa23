"""The KVM API: ioctl numbers, ctypes structs and System -> Vm -> Vcpu handles."""

from .handles import Kvm, KvmError, KvmUnavailable, Vcpu, Vm

__all__ = ["Kvm", "KvmError", "KvmUnavailable", "Vcpu", "Vm"]
