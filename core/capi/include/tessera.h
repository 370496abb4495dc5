/*
 * tessera.h: the C API of tessera-core (static library libtessera_capi.a).
 *
 * Exact attention with online softmax, no heap: every buffer is the
 * caller's. All functions validate their input and return a status code
 * (TESSERA_OK or a negative TESSERA_ERR_*); none crashes on input it
 * refuses. Tensors are contiguous, in BHSD (batch, heads, seq, dim) or BSHD
 * layout:
 *   q (B, Hq, Sq, D)   k (B, Hkv, Skv, D)   v (B, Hkv, Skv, Dv)
 *   y (B, Hq, Sq, Dv)  lse (B, Hq, Sq), always BHS, natural log.
 * Query head h reads KV head h / (Hq / Hkv) (GQA). A query that sees no key
 * gets y = 0 and lse = -inf.
 *
 * Link: arm-none-eabi-gcc ... libtessera_capi.a -lgcc
 */
#ifndef TESSERA_H
#define TESSERA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Tile sizes of the library's kernel: BQ query rows by BK keys. */
#define TESSERA_BQ 32
#define TESSERA_BK 32
#define TESSERA_DV_ALIGN 16

/*
 * Scratch, in floats, for one tessera_attention_f32 call; a constant
 * expression, for static buffers. Equal to tessera_scratch_len(d, dv):
 *   BQ*D + D*BK + BK*Dvp + BQ*BK + BQ*Dvp + 2*BQ,  Dvp = Dv rounded up to 16.
 */
#define TESSERA_DV_PADDED(dv) ((((dv) + TESSERA_DV_ALIGN - 1) / TESSERA_DV_ALIGN) * TESSERA_DV_ALIGN)
#define TESSERA_SCRATCH_LEN(d, dv)                                                                   \
    (TESSERA_BQ * (d) + (d) * TESSERA_BK + TESSERA_BK * TESSERA_DV_PADDED(dv) + TESSERA_BQ * TESSERA_BK + \
     TESSERA_BQ * TESSERA_DV_PADDED(dv) + 2 * TESSERA_BQ)

#define TESSERA_LAYOUT_BHSD 0u
#define TESSERA_LAYOUT_BSHD 1u

/* Status codes. */
#define TESSERA_OK 0
#define TESSERA_ERR_NULL (-1)      /* a required pointer is null */
#define TESSERA_ERR_ALIGN (-2)     /* a pointer is not aligned for float */
#define TESSERA_ERR_OVERLAP (-3)   /* an output buffer overlaps another buffer */
#define TESSERA_ERR_LAYOUT (-4)    /* layout is not BHSD or BSHD */
#define TESSERA_ERR_HEAD_DIM (-5)  /* head_dim or v_head_dim is 0 */
#define TESSERA_ERR_HEADS (-6)     /* a head count is 0, or q_heads % kv_heads != 0 */
#define TESSERA_ERR_SCALE (-7)     /* scale < 0 or not finite */
#define TESSERA_ERR_SOFTCAP (-8)   /* softcap < 0 or not finite */
#define TESSERA_ERR_WINDOW (-9)    /* a window size < -1 */
#define TESSERA_ERR_OVERFLOW (-10) /* a size overflows the address space */
#define TESSERA_ERR_TOO_SHORT (-11) /* q, k, v, y or scratch is shorter than needed */
#define TESSERA_ERR_LENGTH (-12)   /* lse does not hold exactly B*Hq*Sq floats */
#define TESSERA_ERR_INTERNAL (-13) /* a bug; please report it */

/* One attention problem: sizes, scalars and the mask. 15 four-byte fields. */
typedef struct tessera_spec {
    uint32_t batch;      /* B */
    uint32_t q_heads;    /* Hq */
    uint32_t kv_heads;   /* Hkv, divides Hq */
    uint32_t q_len;      /* Sq */
    uint32_t kv_len;     /* Skv */
    uint32_t head_dim;   /* D */
    uint32_t v_head_dim; /* Dv */
    float scale;         /* 0: 1/sqrt(D) */
    float softcap;       /* c*tanh(x/c) on the scores; 0: off */
    uint32_t layout;     /* TESSERA_LAYOUT_BHSD or TESSERA_LAYOUT_BSHD */
    uint32_t causal;     /* non-zero: query i sees key j only if j <= i + q_offset */
    int32_t q_offset;    /* position of query 0 relative to key 0 */
    int32_t left_window; /* keys before p - left_window are masked; -1: unbounded */
    int32_t right_window; /* keys after p + right_window are masked; -1: unbounded */
    uint32_t global_tokens; /* the first G positions see and are seen by all (sinks when causal) */
} tessera_spec;

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(tessera_spec) == 60, "tessera_spec must be 15 four-byte fields");
#endif

/* Floats of scratch that one tessera_attention_f32 call needs. */
size_t tessera_scratch_len(uint32_t head_dim, uint32_t v_head_dim);

/*
 * y (and lse, if not NULL) = attention(q, k, v) under spec. Each pointer
 * comes with its length in floats; lse_len must be B*Hq*Sq when lse is not
 * NULL. y, lse and scratch must not overlap each other or the inputs.
 * Returns TESSERA_OK or a TESSERA_ERR_* code; on error y may be partly
 * written.
 */
int32_t tessera_attention_f32(const tessera_spec *spec, const float *q, size_t q_len, const float *k,
                              size_t k_len, const float *v, size_t v_len, float *y, size_t y_len,
                              float *lse, size_t lse_len, float *scratch, size_t scratch_len);

/*
 * Merge two results over disjoint key sets, exactly: rows rows of
 * v_head_dim floats each (y_*) and their lse. y and lse must not overlap
 * the inputs.
 */
int32_t tessera_merge_f32(const float *y_a, const float *lse_a, const float *y_b, const float *lse_b,
                          float *y, float *lse, size_t rows, uint32_t v_head_dim);

/* A static, NUL-terminated description of a status code. */
const char *tessera_status_name(int32_t status);

#ifdef __cplusplus
}
#endif

#endif /* TESSERA_H */
