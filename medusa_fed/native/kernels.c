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
 * u = uniform(key, element offset), or u_in[j] for element start + j when u_in is not NULL (the
 * tests' hand-picked draws). Each block runs as whole-block passes that the compiler vectorises.
 * Returns 0, or -1 when memory for the block buffers could not be had. */
int medusa_assign(int32_t k, int32_t m, const int64_t *const *cidx, const float *const *cval,
                  const int64_t *ccount, const int64_t *const *uidx, const float *const *uval,
                  const int64_t *ucount, int64_t start, int64_t n, uint64_t key, int32_t policy,
                  int32_t unselected, uint8_t *out, const float *u_in) {
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
        if (draw && u_in)
            memcpy(u, u_in + b0, sizeof(float) * (size_t)bw);
        else if (draw)
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

/* ---- merge: fused per-element passes of medusa's disjoint sum (medusa_fed.merging.fused) ---- */

/* the nonzeros of d */
int64_t medusa_count(const float *restrict d, int64_t n) {
    int64_t nz = 0;
    for (int64_t j = 0; j < n; j++) nz += d[j] != 0.0f;
    return nz;
}

/* acc += d (fp32, element by element); returns the nonzeros of d */
int64_t medusa_add_count(float *restrict acc, const float *restrict d, int64_t n) {
    int64_t nz = 0;
    for (int64_t j = 0; j < n; j++) {
        nz += d[j] != 0.0f;
        acc[j] += d[j];
    }
    return nz;
}

/* out[0] = the nonzeros of a, out[1] = its inf / NaN entries */
void medusa_count_finite(const float *restrict a, int64_t n, int64_t *out) {
    int64_t nz = 0, bad = 0;
    for (int64_t j = 0; j < n; j++) {
        uint32_t bits;
        memcpy(&bits, a + j, 4);
        nz += a[j] != 0.0f;
        bad += (bits & 0x7f800000U) == 0x7f800000U;
    }
    out[0] = nz, out[1] = bad;
}

/* a = a + base (fp32); returns how many of the sums differ from base (NaN counts as changed) */
int64_t medusa_add_changed(float *restrict a, const float *restrict base, int64_t n) {
    int64_t changed = 0;
    for (int64_t j = 0; j < n; j++) {
        const float m = a[j] + base[j];
        a[j] = m;
        changed += m != base[j];
    }
    return changed;
}

/* ---- merge: TIES with the magnitude trim, per branch in fused passes (merging.fused) ---- */

static inline uint32_t abs_bits(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    return b & 0x7fffffffU;
}

/* hist[|d| bit pattern >> 16] += 1 (32,768 buckets: the sign bit is cleared) */
void medusa_hist_high(const float *restrict d, int64_t n, int64_t *restrict hist) {
    for (int64_t j = 0; j < n; j++) hist[abs_bits(d[j]) >> 16]++;
}

/* hist[low 16 bits] += 1 for the entries whose |d| pattern has the high 16 bits `high` */
void medusa_hist_low(const float *restrict d, int64_t n, uint32_t high, int64_t *restrict hist) {
    for (int64_t j = 0; j < n; j++) {
        const uint32_t b = abs_bits(d[j]);
        if ((b >> 16) == high) hist[b & 0xffffU]++;
    }
}

/* The trimmed value: d where |d| > thr or (|d| == thr while ties are left, by position), else
 * d * 0 (a signed zero, as torch's multiply by the keep mask); trim == 0 keeps d as it is. */
static inline float trimmed(float v, int32_t trim, float thr, int64_t *ties) {
    if (!trim) return v;
    const float a = fabsf(v);
    int keep = a > thr;
    if (!keep && a == thr && *ties > 0) keep = 1, (*ties)--;
    return v * (keep ? 1.0f : 0.0f);
}

/* Pass 1 of one branch: touch += (d != 0); x = trimmed(d); kept += (x != 0); acc += x.
 * counts[0] += nonzeros of d, counts[1] += nonzeros of x. `ties`: tied entries still to keep
 * (INT64_MAX: every entry equal to thr). */
void medusa_ties_pass1(const float *restrict d, int64_t n, int32_t trim, float thr, int64_t ties,
                       float *restrict touch, float *restrict kept, float *restrict acc,
                       int64_t *counts) {
    int64_t raw = 0, nz = 0;
    if (!trim || ties == INT64_MAX) { /* no budget to track: a plain, vectorised pass */
        for (int64_t j = 0; j < n; j++) {
            const float v = d[j];
            const float x = trim ? v * (fabsf(v) >= thr ? 1.0f : 0.0f) : v;
            const float r = v != 0.0f, k = x != 0.0f;
            raw += v != 0.0f, nz += x != 0.0f;
            touch[j] += r, kept[j] += k, acc[j] += x;
        }
    } else {
        for (int64_t j = 0; j < n; j++) {
            const float v = d[j], x = trimmed(v, trim, thr, &ties);
            raw += v != 0.0f, nz += x != 0.0f;
            touch[j] += v != 0.0f, kept[j] += x != 0.0f, acc[j] += x;
        }
    }
    counts[0] += raw, counts[1] += nz;
}

/* Pass 2 of one branch: x = trimmed(d) * s, s = +1 where acc >= 0 else -1 (the elected sign);
 * count += (x > 0); total += max(x, 0). */
void medusa_ties_pass2(const float *restrict d, int64_t n, int32_t trim, float thr, int64_t ties,
                       const float *restrict acc, float *restrict count, float *restrict total) {
    if (!trim || ties == INT64_MAX) {
        for (int64_t j = 0; j < n; j++) {
            const float v = d[j];
            const float x = (trim ? v * (fabsf(v) >= thr ? 1.0f : 0.0f) : v) *
                            (acc[j] >= 0.0f ? 1.0f : -1.0f);
            count[j] += x > 0.0f ? 1.0f : 0.0f;
            total[j] += x > 0.0f ? x : 0.0f;
        }
    } else {
        for (int64_t j = 0; j < n; j++) {
            const float x = trimmed(d[j], trim, thr, &ties) * (acc[j] >= 0.0f ? 1.0f : -1.0f);
            count[j] += x > 0.0f ? 1.0f : 0.0f;
            total[j] += x > 0.0f ? x : 0.0f;
        }
    }
}

/* The disjoint mean, in place in total: total * s / max(count, 1), then * scale unless 1.
 * counts[0] += elements with touch > 1 (overlap), [1] += kept > 1 (elected), [2] += count < kept
 * (discarded). */
void medusa_ties_final(const float *restrict acc, const float *restrict count,
                       const float *restrict touch, const float *restrict kept,
                       float *restrict total, int64_t n, float scale, int64_t *counts) {
    int64_t overlap = 0, elected = 0, discarded = 0;
    for (int64_t j = 0; j < n; j++) {
        float m = total[j] * (acc[j] >= 0.0f ? 1.0f : -1.0f);
        m = m / (count[j] > 1.0f ? count[j] : 1.0f);
        total[j] = scale != 1.0f ? m * scale : m;
        overlap += touch[j] > 1.0f, elected += kept[j] > 1.0f, discarded += count[j] < kept[j];
    }
    counts[0] += overlap, counts[1] += elected, counts[2] += discarded;
}
