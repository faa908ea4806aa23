/*
 * The ring-0 stub: 256 interrupt entry points and the int3 services.
 *
 * On our KVM backend ring-0 code is emulated one instruction at a time, so
 * this file stays small and uses no SSE.  Entry is always through an IDT
 * interrupt gate (IF cleared).  The VMM builds the IDT from pv_vectors (found
 * through the .paravm_image header).
 *
 *   vectors >= 32: set the vector's bit in the vCPU page (GS base), EOI, iretq
 *   vector 3 (int3, the only DPL-3 gate): a stub call, op in rax
 *   other exceptions: push all GPRs and report the frame to the VMM
 *                     (PV_HC_FAULT); the VMM stops the domain.
 */
#include "paravm/abi.h"

#define APIC_EOI        0xB0
#define APIC_ICR_LOW    0x300
#define APIC_ICR_HIGH   0x310
#define APIC_LVT_TIMER  0x320
#define APIC_TIMER_INIT 0x380
#define APIC_TIMER_DIV  0x3E0

    .section .text.pv_stub, "ax"
    .code64
    .balign 16
    .global pv_vectors
pv_vectors:
    vector = 0
    .rept 256
    .balign 16
    .if (vector == 8) || ((vector >= 10) && (vector <= 14)) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    .else
    pushq $0
    .endif
    pushq $vector
    jmp pv_isr_common
    vector = vector + 1
    .endr

    .balign 16
pv_isr_common:
    /* stack: vector, error, rip, cs, rflags, rsp, ss */
    pushq %rax
    movq 8(%rsp), %rax
    cmpq $32, %rax
    jb 1f
    cmpq $PV_VEC_SPURIOUS, %rax
    je 2f
    lock btsq %rax, %gs:PV_VP_PENDING
    /* Taken on the block's hlt itself (a backend that delivers right after
     * sti, without the one-instruction shadow): resume after the hlt, or the
     * vCPU would halt with its wake-up already consumed. */
    leaq pv_halt(%rip), %rax
    cmpq %rax, 24(%rsp)
    jne 3f
    incq 24(%rsp)                /* hlt is one byte */
3:  movl $(PV_LAPIC_BASE + APIC_EOI), %eax
    movl $0, (%rax)
2:  popq %rax
    addq $16, %rsp
    iretq

1:  cmpq $3, %rax
    je pv_service
    /* An exception: save everything and report. */
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    movl $PV_HC_FAULT, %eax
    outl %eax, $PV_HC_PORT
3:  hlt
    jmp 3b

pv_service:
    /* stack: saved rax (= op), vector, error, rip, cs, rflags, rsp, ss */
    movq (%rsp), %rax
    cmpq $PV_STUB_BLOCK, %rax
    je 10f
    cmpq $PV_STUB_IPI, %rax
    je 20f
    movq $-38, %rax             /* -ENOSYS */
    jmp 90f

10: /* block: rdi = timeout ns (0: none) */
    movq %gs:PV_VP_PENDING, %rax
    orq %gs:PV_VP_PENDING+8, %rax
    orq %gs:PV_VP_PENDING+16, %rax
    orq %gs:PV_VP_PENDING+24, %rax
    jnz 19f
    testl %edi, %edi
    jz 12f
    movl $PV_LAPIC_BASE, %eax
    movl $0xB, APIC_TIMER_DIV(%rax)          /* divide by 1: 1 count = 1 ns in KVM */
    movl $PV_VEC_TIMER, APIC_LVT_TIMER(%rax) /* one-shot, unmasked */
    movl %edi, APIC_TIMER_INIT(%rax)
12: sti
pv_halt:
    hlt
    cli
    testl %edi, %edi
    jz 19f
    movl $PV_LAPIC_BASE, %eax
    movl $0, APIC_TIMER_INIT(%rax)           /* disarm */
19: xorl %eax, %eax
    jmp 90f

20: /* IPI: rdi = destination APIC id, rsi = vector */
    pushq %rdi
    pushq %rsi
    movl $PV_LAPIC_BASE, %eax
    shll $24, %edi
    movl %edi, APIC_ICR_HIGH(%rax)
    andl $0xFF, %esi
    orl $0x4000, %esi                        /* fixed, physical, assert */
    movl %esi, APIC_ICR_LOW(%rax)
    popq %rsi
    popq %rdi
    xorl %eax, %eax

90: addq $24, %rsp                           /* saved rax, vector, error */
    iretq
