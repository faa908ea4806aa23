"""x86-64: the reserved layout, long-mode entry, CPUID and LAPIC set-up."""
