"""The hypercall ABI (docs/hypercalls.md); numbers shared with guest/include/paravm/abi.h.

A hypercall is one port-I/O exit from the guest:

* register form (the fast one): ``outl %eax, $HC_PORT`` with the number in
  eax and up to six arguments in rdi, rsi, rdx, r10, r8, r9; the VMM reads them
  from the ``kvm_run`` page (``KVM_CAP_SYNC_REGS``) and writes the result into
  rax there, with no ``KVM_GET_REGS``/``KVM_SET_REGS``;
* block form: ``outl %eax, $HC_BLOCK_PORT`` with eax = GPA of a
  ``struct pv_hcall_block {u64 nr; u64 args[6]; i64 ret;}``; the VMM copies
  the block once, dispatches, and writes ``ret`` back.

Results are >= 0, or a negative Linux errno.
"""

HC_PORT = 0xE0
HC_BLOCK_PORT = 0xE1
HC_RESERVED_PORTS = 8   # 0xE0..0xE7 belong to the hypercall ABI (no device there)
HC_BLOCK_SIZE = 64      # bytes of struct pv_hcall_block
HC_MAX = 64             # size of the dispatch table

HC_CONSOLE_WRITE = 0
HC_EXIT = 1
HC_CLOCK_NS = 2
HC_BOOT_MARK = 3
HC_FAULT = 4
HC_VCPU_OFF = 5
HC_NOP = 6

BOOT_MARK_MAIN = 1

# Linux errno values returned (negated) to guests.
EPERM, ENOENT, E2BIG, EFAULT, EBUSY, EINVAL, ENOSPC, ENOSYS = 1, 2, 7, 14, 16, 22, 28, 38

CONSOLE_WRITE_MAX = 64 * 1024   # bytes per console write call
