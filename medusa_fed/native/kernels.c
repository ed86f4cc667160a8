/* medusa-fed's fused loops: what the torch formulation runs as one pass per op, in one pass.
 *
 * Compiled on first use by medusa_fed.native (cc -O3 -ffp-contract=off, IEEE arithmetic: no
 * fast-math), loaded with ctypes. Every function has a torch twin that gives the same bits
 * (tests/unit/test_native.py runs both on the same inputs); the twin runs where no C compiler is.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NO_OWNER 255
#define BLK 4096 /* columns per block: the k weight rows stay in L2 */

/* A 32-bit integer hash (Wellons' lowbias32): a bijection with full avalanche */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

/* The uniform of element idx of stream key: two rounds of mix32 over (idx, key), top 24 bits
 * (exact in float32). Depends on (key, idx) only, never on how a tensor is chunked. */
static inline float uniform(uint64_t key, uint64_t idx) {
    uint32_t h = mix32((uint32_t)idx ^ (uint32_t)key);
    h = mix32(h ^ (uint32_t)(idx >> 32) ^ (uint32_t)(key >> 32));
    return (float)(h >> 8) * 0x1p-24f;
}

void medusa_uniforms(uint64_t key, int64_t start, int64_t n, float *restrict out) {
    for (int64_t j = 0; j < n; j++) out[j] = uniform(key, (uint64_t)(start + j));
}

static inline int sgn(float x) { return (x > 0.0f) - (x < 0.0f); }

/* Owners (uint8) of the n elements [start, start + n) of one tensor.
 *
 * k controllable teams (sorted), m uncontrolled (sorted); team t's probe entries inside the range
 * are idx[t][0..count[t]) (flat offsets in the tensor, ascending, unique) with float32 values
 * val[t][...]. Candidate weights, direction rule and policies as medusa_fed.ownership.candidates
 * / .kernels state them: rho = sign(float32 sum of the uncontrolled values, in team order); team
 * i is a candidate with weight |v| where rho == 0 or sign(v) == rho. policy 0 = proportional
 * (invert the cumulative weights, summed in double with each prefix rounded to float32, at
 * min(u * total, the float below total)), 1 = argmax (strictly greater wins: ties keep the
 * lowest team). unselected 0 = random (trunc(min(u * k, k - 1))), 1 = frozen (NO_OWNER).
 * u = uniform(key, element offset). Each block runs as whole-block passes that the compiler
 * vectorises. Returns 0, or -1 when memory for the block buffers could not be had. */
int medusa_assign(int32_t k, int32_t m, const int64_t *const *cidx, const float *const *cval,
                  const int64_t *ccount, const int64_t *const *uidx, const float *const *uval,
                  const int64_t *ucount, int64_t start, int64_t n, uint64_t key, int32_t policy,
                  int32_t unselected, uint8_t *out) {
    const size_t kk = (size_t)k;
    float *w = malloc(sizeof(float) * (kk + 3) * BLK); /* k weight rows, u, acc, best / x */
    double *a = malloc(sizeof(double) * BLK);
    int32_t *own_buf = malloc(sizeof(int32_t) * BLK);
    int64_t *cur = calloc(kk + (size_t)m + 1, sizeof(int64_t));
    if (!w || !a || !own_buf || !cur) {
        free(w), free(a), free(own_buf), free(cur);
        return -1;
    }
    float *restrict u = w + kk * BLK, *restrict acc = u + BLK, *restrict best = acc + BLK;
    int32_t *restrict own = own_buf;
    const int draw = policy == 0 || unselected == 0;
    const float kf = (float)k, kmax = (float)(k - 1);
    for (int64_t b0 = 0; b0 < n; b0 += BLK) {
        const int64_t bw = n - b0 < BLK ? n - b0 : BLK;
        const int64_t lo = start + b0, hi = lo + bw;
        /* candidate weights: row i of the block at w + i * BLK */
        memset(w, 0, sizeof(float) * kk * BLK);
        if (m > 0) {
            memset(acc, 0, sizeof(float) * BLK);
            for (int32_t t = 0; t < m; t++) {
                int64_t c = cur[k + t];
                for (; c < ucount[t] && uidx[t][c] < hi; c++) acc[uidx[t][c] - lo] += uval[t][c];
                cur[k + t] = c;
            }
        }
        for (int32_t i = 0; i < k; i++) {
            float *wi = w + (size_t)i * BLK;
            int64_t c = cur[i];
            for (; c < ccount[i] && cidx[i][c] < hi; c++) {
                const int64_t j = cidx[i][c] - lo;
                const float v = cval[i][c];
                if (m > 0) {
                    const int r = sgn(acc[j]);
                    if (r != 0 && sgn(v) != r) continue;
                }
                wi[j] = fabsf(v);
            }
            cur[i] = c;
        }
        if (draw)
            for (int64_t j = 0; j < bw; j++) u[j] = uniform(key, (uint64_t)(lo + j));
        const float *restrict w0 = w;
        if (policy == 1) { /* argmax; best[j] > 0 marks a candidate */
            for (int64_t j = 0; j < bw; j++) best[j] = w0[j], own[j] = 0;
            for (int32_t i = 1; i < k; i++) {
                const float *restrict wi = w + (size_t)i * BLK;
                for (int64_t j = 0; j < bw; j++) {
                    const float x = wi[j], b = best[j];
                    own[j] = x > b ? i : own[j];
                    best[j] = x > b ? x : b;
                }
            }
        } else { /* proportional; the prefixes overwrite rows 1 .. k-2 in place */
            for (int64_t j = 0; j < bw; j++) a[j] = (double)w0[j];
            for (int32_t i = 1; i < k; i++) {
                float *restrict wi = w + (size_t)i * BLK;
                for (int64_t j = 0; j < bw; j++) {
                    a[j] += (double)wi[j];
                    wi[j] = (float)a[j];
                }
            }
            for (int64_t j = 0; j < bw; j++) {
                const float total = (float)a[j];
                uint32_t bits;
                memcpy(&bits, &total, 4);
                bits -= total > 0.0f; /* nextafter(total, 0) for total >= 0, inf included */
                float below, x = u[j] * total;
                memcpy(&below, &bits, 4);
                best[j] = x < below ? x : below; /* the draw point */
                own[j] = 0;
            }
            for (int32_t i = 0; i < k - 1; i++) {
                const float *restrict ci = w + (size_t)i * BLK;
                for (int64_t j = 0; j < bw; j++) own[j] += ci[j] <= best[j];
            }
            /* a candidate: total > 0, i.e. the last prefix */
            const float *restrict last = w + (size_t)(k - 1) * BLK;
            for (int64_t j = 0; j < bw; j++) best[j] = last[j];
        }
        uint8_t *restrict o = out + b0;
        if (unselected == 0) {
            for (int64_t j = 0; j < bw; j++) {
                float f = u[j] * kf;
                f = f > kmax ? kmax : f;
                const int32_t fill = (int32_t)f, r = best[j] > 0.0f ? own[j] : fill;
                o[j] = (uint8_t)r;
            }
        } else {
            for (int64_t j = 0; j < bw; j++) {
                const int32_t r = best[j] > 0.0f ? own[j] : NO_OWNER;
                o[j] = (uint8_t)r;
            }
        }
    }
    free(w), free(a), free(own_buf), free(cur);
    return 0;
}
