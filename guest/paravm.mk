# Flags for building paravm guests; include this from a program's Makefile.
PV_GUEST_DIR := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
PV_CFLAGS := -O2 -g -std=gnu11 -Wall -Wextra -ffreestanding -fno-pie -fno-pic \
	-fno-stack-protector -fno-asynchronous-unwind-tables -fcf-protection=none \
	-fno-tree-loop-distribute-patterns \
	-mcmodel=small -march=x86-64 -I$(PV_GUEST_DIR)/include
PV_LDFLAGS := -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-z,max-page-size=4096 \
	-Wl,-z,noexecstack -T $(PV_GUEST_DIR)/paravm.ld
PV_LIB := $(PV_GUEST_DIR)/build/libparavm.a
PV_LIBGCC := $(shell $(CC) -print-libgcc-file-name)
# pv_link OUT, OBJS...
pv_link = $(CC) $(PV_CFLAGS) $(PV_LDFLAGS) -o $(1) $(2) -Wl,--whole-archive $(PV_LIB) -Wl,--no-whole-archive $(PV_LIBGCC)
