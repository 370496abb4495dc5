/*
 * Minimal Cortex-M start-up for the C example: vector table, reset (zero
 * .bss, copy .data, enable the FPU, run main, exit through semihosting with
 * its status) and a fault handler that exits with status 3. Uses the
 * symbols of core/firmware/link/cortex-m.ld.
 */
#include <stdint.h>

#include "semihost.h"

extern uint32_t __sbss, __ebss, __sdata, __edata, __sidata, __stack_top;
int main(void);
void tessera_reset(void);
void tessera_fault(void);

typedef void (*vector)(void);

__attribute__((section(".vector_table"), used)) const vector vectors[16] = {
    (vector)&__stack_top, tessera_reset, tessera_fault, tessera_fault, tessera_fault, tessera_fault,
    tessera_fault,        tessera_fault, tessera_fault, tessera_fault, tessera_fault, tessera_fault,
    tessera_fault,        tessera_fault, tessera_fault, tessera_fault,
};

int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void sh_print(const char *s)
{
    static int console = -1;
    if (console < 0) {
        const uintptr_t open[3] = {(uintptr_t)":tt", 4, 3};
        console = semihost(0x01, open);
    }
    uint32_t n = 0;
    while (s[n]) {
        n++;
    }
    const uintptr_t write[3] = {(uintptr_t)console, (uintptr_t)s, n};
    semihost(0x05, write);
}

void sh_print_int(long long x)
{
    char buf[24];
    int i = 23;
    int neg = x < 0;
    unsigned long long u = neg ? 0ull - (unsigned long long)x : (unsigned long long)x;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (neg) {
        buf[--i] = '-';
    }
    sh_print(&buf[i]);
}

void sh_exit(int code)
{
    const uintptr_t block[2] = {0x20026, (uintptr_t)code};
    semihost(0x20, block); /* SYS_EXIT_EXTENDED: QEMU returns `code` */
    for (;;) {
    }
}

void tessera_fault(void)
{
    sh_print("HardFault\n");
    sh_exit(3);
}

void tessera_reset(void)
{
    for (uint32_t *p = &__sbss; p < &__ebss; p++) {
        *p = 0;
    }
    const uint32_t *src = &__sidata;
    for (uint32_t *p = &__sdata; p < &__edata; p++) {
        *p = *src++;
    }
    volatile uint32_t *cpacr = (volatile uint32_t *)0xE000ED88u;
    *cpacr |= 0xFu << 20; /* CP10, CP11: full access */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    sh_exit(main());
}
