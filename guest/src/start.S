/*
 * Ring-3 entry.  The VMM starts every vCPU here at once, in 64-bit mode at
 * CPL 3, with rdi = vCPU index, rsi = boot info GPA, rsp = this vCPU's stack.
 */
#include "paravm/abi.h"

    .section .text.start, "ax"
    .code64
    .global _start
_start:
    xorl %ebp, %ebp
    andq $-16, %rsp
    call pv_start_c
1:  jmp 1b
