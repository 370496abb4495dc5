/*
 * insn_count: a QEMU TCG plugin that counts retired guest instructions
 * exactly between two marker addresses.
 *
 *   qemu-system-arm ... -icount shift=0 \
 *     -plugin libinsn_count.so,begin=0x<addr>,end=0x<addr>[,out=FILE]
 *
 * Every translated block adds its instruction count to a running total when
 * it starts executing. When the instruction at `begin` or `end` executes,
 * the total is corrected by the instructions of its block that have not run
 * yet (known at translation time), which gives the exact number of
 * instructions retired before the marker. Each begin..end pair prints one
 * line, `insns N`, in order. Exact as long as no block is left half-way by
 * an exception inside the region (the measured code takes none).
 * Single vCPU only (the boards used here have one).
 *
 * With `profile=N`, it also prints the N blocks that retired the most
 * instructions inside regions, as `block 0x<pc> insns <n>`, for
 * llvm-objdump / addr2line.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

#ifndef QEMU_PLUGIN_API_VERSION
#define QEMU_PLUGIN_API_VERSION 1
#endif

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_API_VERSION;

static uint64_t begin_addr, end_addr;
static uint64_t total;    /* instructions of every block entered so far */
static uint64_t at_begin; /* retired count at the last begin marker */
static int open_region;
static unsigned regions;
static FILE *out;

/* Per-block profile (profile=N): open addressing on the block's pc. */
#define PROFILE_SLOTS (1u << 16)
struct block {
    uint64_t pc;
    uint64_t n_insns;
    uint64_t retired;
};
static struct block *profile;
static unsigned profile_top;

static struct block *block_for(uint64_t pc, uint64_t n)
{
    uint64_t h = (pc >> 1) * 0x9e3779b97f4a7c15ull;
    for (unsigned i = 0; i < PROFILE_SLOTS; i++) {
        struct block *b = &profile[(h + i) & (PROFILE_SLOTS - 1)];
        if (b->pc == pc && b->n_insns == n) {
            return b;
        }
        if (b->pc == 0) {
            b->pc = pc;
            b->n_insns = n;
            return b;
        }
    }
    return NULL;
}

static void on_profiled_block(unsigned int vcpu, void *blk)
{
    struct block *b = blk;
    (void)vcpu;
    total += b->n_insns;
    if (open_region) {
        b->retired += b->n_insns;
    }
}

static int by_retired(const void *a, const void *b)
{
    const struct block *x = a, *y = b;
    return (x->retired < y->retired) - (x->retired > y->retired);
}

static void on_block(unsigned int vcpu, void *n_insns)
{
    (void)vcpu;
    total += (uintptr_t)n_insns;
}

/* userdata: instructions of the marker's block from the marker on. */
static void on_begin(unsigned int vcpu, void *rest)
{
    (void)vcpu;
    at_begin = total - (uintptr_t)rest;
    open_region = 1;
}

static void on_end(unsigned int vcpu, void *rest)
{
    (void)vcpu;
    if (!open_region) {
        return;
    }
    uint64_t now = total - (uintptr_t)rest;
    fprintf(out, "insns %" PRIu64 "\n", now - at_begin);
    fflush(out);
    open_region = 0;
    regions++;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    struct block *blk = profile ? block_for(qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, 0)), n) : NULL;
    if (blk) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_profiled_block, QEMU_PLUGIN_CB_NO_REGS, blk);
    } else {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)n);
    }
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        void *rest = (void *)(uintptr_t)(n - i);
        if (pc == begin_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_begin, QEMU_PLUGIN_CB_NO_REGS, rest);
        } else if (pc == end_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, rest);
        }
    }
}

static void on_plugin_exit(qemu_plugin_id_t id, void *p)
{
    (void)id;
    (void)p;
    fprintf(out, "regions %u\n", regions);
    if (profile) {
        qsort(profile, PROFILE_SLOTS, sizeof *profile, by_retired);
        for (unsigned i = 0; i < profile_top && profile[i].retired; i++) {
            fprintf(out, "block 0x%08" PRIx64 " len %" PRIu64 " insns %" PRIu64 "\n", profile[i].pc, profile[i].n_insns,
                    profile[i].retired);
        }
    }
    if (out != stderr) {
        fclose(out);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    out = stderr;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "begin=", 6) == 0) {
            begin_addr = strtoull(a + 6, NULL, 0) & ~1ull; /* drop the Thumb bit */
        } else if (strncmp(a, "end=", 4) == 0) {
            end_addr = strtoull(a + 4, NULL, 0) & ~1ull;
        } else if (strncmp(a, "profile=", 8) == 0) {
            profile_top = (unsigned)strtoul(a + 8, NULL, 0);
            profile = calloc(PROFILE_SLOTS, sizeof *profile);
            if (!profile) {
                return -1;
            }
        } else if (strncmp(a, "out=", 4) == 0) {
            out = fopen(a + 4, "w");
            if (!out) {
                perror(a + 4);
                return -1;
            }
        } else {
            fprintf(stderr, "insn_count: unknown argument %s (want begin=, end=, out=, profile=)\n", a);
            return -1;
        }
    }
    if (!begin_addr || !end_addr) {
        fprintf(stderr, "insn_count: begin= and end= addresses are required\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}
