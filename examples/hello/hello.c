/* hello: print a greeting from every vCPU, then exit with the status given
 * as the first argument (default 0). */
#include <paravm.h>

static void greet(void *arg)
{
    const char *who = arg;
    printf("hello from vCPU %u of %s\n", pv_cpu(), who);
}

int main(int argc, char **argv)
{
    const struct pv_boot_info *bi = pv_boot_info();
    int status = argc > 1 ? (int)strtol(argv[1], 0, 0) : 0;
    printf("hello from %s (domain %u, %u vCPU, %lu MiB)\n", bi->name, bi->domid,
           bi->nr_vcpus, (unsigned long)(bi->ram_size >> 20));
    for (unsigned cpu = 1; cpu < pv_nr_cpus(); cpu++) {
        pv_smp_start(cpu, greet, (void *)bi->name);
        pv_smp_join(cpu);
    }
    printf("%s exits with status %d\n", bi->name, status);
    return status;
}
