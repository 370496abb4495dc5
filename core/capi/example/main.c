/*
 * The C API on a Cortex-M4F under QEMU: one masked GQA case against a naive
 * double-precision reference written here, independent of tessera; the
 * error codes of invalid calls; and merging two key halves. Prints
 * "N passed, M failed" and exits with 0 only if everything passed.
 */
#include <stddef.h>
#include <stdint.h>

#include "semihost.h"
#include "tessera.h"

#define B 1
#define HQ 4
#define HKV 2
#define S 40
#define D 16
#define DV 16

static float q[B * HQ * S * D], k[B * HKV * S * D], v[B * HKV * S * DV];
static float y[B * HQ * S * DV], lse[B * HQ * S];
static float y_a[B * HQ * S * DV], lse_a[B * HQ * S], y_b[B * HQ * S * DV], lse_b[B * HQ * S];
static float merged[B * HQ * S * DV], merged_lse[B * HQ * S];
/* Sized at compile time by the header's macro. */
static float scratch[TESSERA_SCRATCH_LEN(D, DV)];

static int passed, failed;

static void check(int ok, const char *what)
{
    sh_print(ok ? "ok   " : "FAIL ");
    sh_print(what);
    sh_print("\n");
    if (ok) {
        passed++;
    } else {
        failed++;
    }
}

static void expect_status(int32_t got, int32_t want, const char *what)
{
    if (got != want) {
        sh_print("     got status ");
        sh_print_int(got);
        sh_print(": ");
        sh_print(tessera_status_name(got));
        sh_print("\n");
    }
    check(got == want, what);
}

static double exp_d(double x)
{
    const double ln2 = 0.69314718055994530942;
    if (x < -700.0) {
        return 0.0;
    }
    int n = (int)(x / ln2 + (x < 0 ? -0.5 : 0.5));
    double r = x - n * ln2, term = 1.0, sum = 1.0;
    for (int i = 1; i <= 18; i++) {
        term *= r / i;
        sum += term;
    }
    for (; n > 0; n--) {
        sum *= 2.0;
    }
    for (; n < 0; n++) {
        sum *= 0.5;
    }
    return sum;
}

static float fill_value(uint32_t *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)(int32_t)(*state >> 8) / (float)(1 << 23) - 1.0f + 1.0f / 4096.0f;
}

/* Causal, window (7, 0), 2 global tokens; scale 1/sqrt(16) = 0.25. */
static int visible(int i, int j)
{
    if (j > i) {
        return 0;
    }
    return j < 2 || i < 2 || j >= i - 7;
}

/* Max |y - reference| over the case, in units of 1e-9. */
static long long reference_error(void)
{
    double worst = 0.0;
    for (int h = 0; h < HQ; h++) {
        int hk = h / (HQ / HKV);
        for (int i = 0; i < S; i++) {
            double s[S], m = -1e300, l = 0.0;
            for (int j = 0; j < S; j++) {
                double dot = 0.0;
                for (int e = 0; e < D; e++) {
                    dot += (double)q[(h * S + i) * D + e] * (double)k[(hk * S + j) * D + e];
                }
                s[j] = 0.25 * dot;
                if (visible(i, j) && s[j] > m) {
                    m = s[j];
                }
            }
            for (int j = 0; j < S; j++) {
                l += visible(i, j) ? exp_d(s[j] - m) : 0.0;
            }
            for (int e = 0; e < DV; e++) {
                double o = 0.0;
                for (int j = 0; j < S; j++) {
                    if (visible(i, j)) {
                        o += exp_d(s[j] - m) * (double)v[(hk * S + j) * DV + e];
                    }
                }
                double err = (double)y[(h * S + i) * DV + e] - o / l;
                err = err < 0 ? -err : err;
                worst = err > worst || err != err ? err : worst;
            }
        }
    }
    return (long long)(worst * 1e9);
}

int main(void)
{
    uint32_t state = 12345;
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
        q[i] = fill_value(&state);
    }
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        k[i] = fill_value(&state);
    }
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        v[i] = fill_value(&state);
    }
    check(TESSERA_SCRATCH_LEN(D, DV) == tessera_scratch_len(D, DV), "TESSERA_SCRATCH_LEN equals tessera_scratch_len");

    tessera_spec spec = {
        .batch = B, .q_heads = HQ, .kv_heads = HKV, .q_len = S, .kv_len = S, .head_dim = D, .v_head_dim = DV,
        .scale = 0.0f, .softcap = 0.0f, .layout = TESSERA_LAYOUT_BHSD, .causal = 1, .q_offset = 0,
        .left_window = 7, .right_window = 0, .global_tokens = 2,
    };
    for (size_t i = 0; i < sizeof y / sizeof y[0]; i++) {
        y[i] = -12345.0f; /* poison: every element must be written */
    }
    int32_t st = tessera_attention_f32(&spec, q, sizeof q / 4, k, sizeof k / 4, v, sizeof v / 4, y, sizeof y / 4, lse,
                                       sizeof lse / 4, scratch, sizeof scratch / 4);
    expect_status(st, TESSERA_OK, "GQA 4:2, causal, window(7,0), 2 sinks: runs");
    long long err = reference_error();
    sh_print("     max |y - reference| = ");
    sh_print_int(err);
    sh_print(" e-9\n");
    check(err <= 20000, "GQA 4:2, causal, window(7,0), 2 sinks: matches the double reference to 2e-5");

    tessera_spec bad = spec;
    bad.kv_heads = 3;
    expect_status(tessera_attention_f32(&bad, q, sizeof q / 4, k, sizeof k / 4, v, sizeof v / 4, y, sizeof y / 4, 0, 0,
                                        scratch, sizeof scratch / 4),
                  TESSERA_ERR_HEADS, "q_heads not a multiple of kv_heads is refused");
    bad = spec;
    bad.left_window = -5;
    expect_status(tessera_attention_f32(&bad, q, sizeof q / 4, k, sizeof k / 4, v, sizeof v / 4, y, sizeof y / 4, 0, 0,
                                        scratch, sizeof scratch / 4),
                  TESSERA_ERR_WINDOW, "a window below -1 is refused");
    expect_status(tessera_attention_f32(&spec, q, sizeof q / 4, k, sizeof k / 4, v, sizeof v / 4, y, sizeof y / 4, 0, 0,
                                        scratch, sizeof scratch / 4 - 1),
                  TESSERA_ERR_TOO_SHORT, "a short scratch is refused");
    expect_status(tessera_attention_f32(&spec, 0, 0, k, sizeof k / 4, v, sizeof v / 4, y, sizeof y / 4, 0, 0, scratch,
                                        sizeof scratch / 4),
                  TESSERA_ERR_NULL, "a null q is refused");
    expect_status(tessera_attention_f32(&spec, q, sizeof q / 4, k, sizeof k / 4, v, sizeof v / 4, q, sizeof y / 4, 0, 0,
                                        scratch, sizeof scratch / 4),
                  TESSERA_ERR_OVERLAP, "y overlapping q is refused");

    /* Merge: dense attention over all keys against two halves merged. With
       one KV head per batch, keys 0..17 and 17..40 are contiguous halves. */
    tessera_spec dense = spec;
    dense.kv_heads = 1;
    dense.causal = 0;
    dense.left_window = -1;
    dense.right_window = -1;
    dense.global_tokens = 0;
    const uint32_t cut = 17;
    st = tessera_attention_f32(&dense, q, sizeof q / 4, k, S * D, v, S * DV, y, sizeof y / 4, lse, sizeof lse / 4,
                               scratch, sizeof scratch / 4);
    tessera_spec half = dense;
    half.kv_len = cut;
    st |= tessera_attention_f32(&half, q, sizeof q / 4, k, cut * D, v, cut * DV, y_a, sizeof y_a / 4, lse_a,
                                sizeof lse_a / 4, scratch, sizeof scratch / 4);
    half.kv_len = S - cut;
    st |= tessera_attention_f32(&half, q, sizeof q / 4, k + cut * D, (S - cut) * D, v + cut * DV, (S - cut) * DV, y_b,
                                sizeof y_b / 4, lse_b, sizeof lse_b / 4, scratch, sizeof scratch / 4);
    st |= tessera_merge_f32(y_a, lse_a, y_b, lse_b, merged, merged_lse, B * HQ * S, DV);
    expect_status(st, TESSERA_OK, "whole, two halves and their merge run");
    float worst = 0.0f;
    for (size_t i = 0; i < sizeof y / sizeof y[0]; i++) {
        float e = merged[i] - y[i];
        e = e < 0 ? -e : e;
        worst = e > worst || e != e ? e : worst;
    }
    for (size_t i = 0; i < sizeof lse / sizeof lse[0]; i++) {
        float e = merged_lse[i] - lse[i];
        e = e < 0 ? -e : e;
        worst = e > worst || e != e ? e : worst;
    }
    check(worst <= 2e-5f, "merge of the two halves equals the whole");
    expect_status(tessera_merge_f32(y_a, lse_a, y_b, lse_b, merged, merged_lse, B * HQ * S, 0), TESSERA_ERR_HEAD_DIM,
                  "merge with v_head_dim 0 is refused");

    sh_print_int(passed);
    sh_print(" passed, ");
    sh_print_int(failed);
    sh_print(" failed\n");
    return failed != 0;
}
