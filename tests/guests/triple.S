/* A raw guest without the SDK: the VMM finds no .paravm_image section and
 * gives it no IDT (limit 0), so the #UD of ud2 cannot be delivered, becomes a
 * double fault, then a triple fault: KVM_EXIT_SHUTDOWN.  It first says hello
 * with a register-form console_write hypercall. */
#include "paravm/abi.h"

    .section .text.start, "ax"
    .code64
    .global _start
_start:
    leaq msg(%rip), %rdi
    movq $(msg_end - msg), %rsi
    movl $PV_HC_CONSOLE_WRITE, %eax
    outl %eax, $PV_HC_PORT
    ud2
1:  jmp 1b

    .section .rodata
msg:
    .ascii "triple: about to ud2\n"
msg_end:
