/* Vector registers across a grab: loads known values into ymm0-15 (or, with
 * "zmm", zmm0-31 and k1-7), sets a non-default MXCSR, says "ready" with a raw
 * write (no libc in between), spins until SIGUSR1, then stores the registers
 * and compares.  Prints PASS or FAIL: which register. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

volatile int stop;
static void on_usr1(int s) { (void)s; stop = 1; }

uint8_t in_y[16][32] __attribute__((aligned(64))), out_y[16][32] __attribute__((aligned(64)));
uint8_t in_z[32][64] __attribute__((aligned(64))), out_z[32][64] __attribute__((aligned(64)));
uint16_t in_k[8], out_k[8];
uint32_t mxcsr_in = 0x7f80 | (3 << 13), mxcsr_out;   /* round toward zero, masked */
const char ready[] = "ready\n";

#define LOAD_Y(n) "vmovdqa " #n "*32+in_y(%%rip), %%ymm" #n "\n"
#define STORE_Y(n) "vmovdqa %%ymm" #n ", " #n "*32+out_y(%%rip)\n"

static void run_ymm(void)
{
    __asm__ volatile(
        "ldmxcsr mxcsr_in(%%rip)\n"
        LOAD_Y(0) LOAD_Y(1) LOAD_Y(2) LOAD_Y(3) LOAD_Y(4) LOAD_Y(5) LOAD_Y(6) LOAD_Y(7)
        LOAD_Y(8) LOAD_Y(9) LOAD_Y(10) LOAD_Y(11) LOAD_Y(12) LOAD_Y(13) LOAD_Y(14) LOAD_Y(15)
        "mov $1, %%eax\n mov $1, %%edi\n lea ready(%%rip), %%rsi\n mov $6, %%edx\n syscall\n"
        "1: pause\n cmpl $0, stop(%%rip)\n je 1b\n"
        STORE_Y(0) STORE_Y(1) STORE_Y(2) STORE_Y(3) STORE_Y(4) STORE_Y(5) STORE_Y(6) STORE_Y(7)
        STORE_Y(8) STORE_Y(9) STORE_Y(10) STORE_Y(11) STORE_Y(12) STORE_Y(13) STORE_Y(14) STORE_Y(15)
        "stmxcsr mxcsr_out(%%rip)\n"
        ::: "rax", "rcx", "rdx", "rsi", "rdi", "r11", "memory",
        "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
        "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

#define LOAD_Z(n) "vmovdqa64 " #n "*64+in_z(%%rip), %%zmm" #n "\n"
#define STORE_Z(n) "vmovdqa64 %%zmm" #n ", " #n "*64+out_z(%%rip)\n"
#define LOAD_K(n) "kmovw " #n "*2+in_k(%%rip), %%k" #n "\n"
#define STORE_K(n) "kmovw %%k" #n ", " #n "*2+out_k(%%rip)\n"

__attribute__((target("avx512f"))) static void run_zmm(void)
{
    __asm__ volatile(
        LOAD_Z(0) LOAD_Z(1) LOAD_Z(2) LOAD_Z(3) LOAD_Z(4) LOAD_Z(5) LOAD_Z(6) LOAD_Z(7)
        LOAD_Z(8) LOAD_Z(9) LOAD_Z(10) LOAD_Z(11) LOAD_Z(12) LOAD_Z(13) LOAD_Z(14) LOAD_Z(15)
        LOAD_Z(16) LOAD_Z(17) LOAD_Z(18) LOAD_Z(19) LOAD_Z(20) LOAD_Z(21) LOAD_Z(22) LOAD_Z(23)
        LOAD_Z(24) LOAD_Z(25) LOAD_Z(26) LOAD_Z(27) LOAD_Z(28) LOAD_Z(29) LOAD_Z(30) LOAD_Z(31)
        LOAD_K(1) LOAD_K(2) LOAD_K(3) LOAD_K(4) LOAD_K(5) LOAD_K(6) LOAD_K(7)
        "mov $1, %%eax\n mov $1, %%edi\n lea ready(%%rip), %%rsi\n mov $6, %%edx\n syscall\n"
        "1: pause\n cmpl $0, stop(%%rip)\n je 1b\n"
        STORE_Z(0) STORE_Z(1) STORE_Z(2) STORE_Z(3) STORE_Z(4) STORE_Z(5) STORE_Z(6) STORE_Z(7)
        STORE_Z(8) STORE_Z(9) STORE_Z(10) STORE_Z(11) STORE_Z(12) STORE_Z(13) STORE_Z(14) STORE_Z(15)
        STORE_Z(16) STORE_Z(17) STORE_Z(18) STORE_Z(19) STORE_Z(20) STORE_Z(21) STORE_Z(22) STORE_Z(23)
        STORE_Z(24) STORE_Z(25) STORE_Z(26) STORE_Z(27) STORE_Z(28) STORE_Z(29) STORE_Z(30) STORE_Z(31)
        STORE_K(1) STORE_K(2) STORE_K(3) STORE_K(4) STORE_K(5) STORE_K(6) STORE_K(7)
        ::: "rax", "rcx", "rdx", "rsi", "rdi", "r11", "memory");
}

int main(int argc, char **argv)
{
    int zmm = argc > 1 && !strcmp(argv[1], "zmm");
    for (int r = 0; r < 32; r++)
        for (int i = 0; i < 64; i++) {
            in_z[r][i] = (uint8_t)(r * 31 + i * 7 + 1);
            if (r < 16 && i < 32)
                in_y[r][i] = (uint8_t)(r * 17 + i * 3 + 5);
        }
    for (int k = 0; k < 8; k++)
        in_k[k] = (uint16_t)(0x1234 * (k + 1));
    signal(SIGUSR1, on_usr1);
    if (zmm)
        run_zmm();
    else
        run_ymm();
    if (zmm) {
        for (int r = 0; r < 32; r++)
            if (memcmp(in_z[r], out_z[r], 64)) {
                printf("FAIL: zmm%d\n", r);
                return 1;
            }
        for (int k = 1; k < 8; k++)
            if (in_k[k] != out_k[k]) {
                printf("FAIL: k%d\n", k);
                return 1;
            }
    } else {
        for (int r = 0; r < 16; r++)
            if (memcmp(in_y[r], out_y[r], 32)) {
                printf("FAIL: ymm%d\n", r);
                return 1;
            }
        if (mxcsr_out != mxcsr_in) {
            printf("FAIL: mxcsr %#x != %#x\n", mxcsr_out, mxcsr_in);
            return 1;
        }
    }
    printf("PASS\n");
    return 0;
}
