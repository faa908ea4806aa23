/*
 * profile_loop.so: cvmm.c's exit loop as functions that profile_exit.py calls
 * through ctypes, so that they run inside the Python (paravm) process.
 */
#include <errno.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <sys/ioctl.h>

/* Run the vCPU, answering register-form PV_HC_NOP exits here (rax = 0 through
 * sync regs); return at the first other exit, kvm_run left as it is.
 * Returns the number of NOP exits handled, or -errno. */
long pv_nop_loop(int vcpu_fd, struct kvm_run *run)
{
    long handled = 0;
    for (;;) {
        while (ioctl(vcpu_fd, KVM_RUN, 0) < 0)
            if (errno != EINTR)
                return -errno;
        if (run->exit_reason != KVM_EXIT_IO || run->io.port != 0xE0 ||
            (run->s.regs.regs.rax & 0xFFFFFFFF) != 6)
            return handled;
        run->s.regs.regs.rax = 0;
        run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
        handled++;
    }
}

/* One KVM_RUN (what fcntl.ioctl does), for a Python loop that drives every exit. */
long pv_run_once(int vcpu_fd)
{
    while (ioctl(vcpu_fd, KVM_RUN, 0) < 0)
        if (errno != EINTR)
            return -errno;
    return 0;
}
