/* Layers a CPU training step runs faster fused than as torch ops (see mnist_core/fused_layers.py).

   First: a one-channel KxK convolution (stride 1, zero padding P), then 2x2 max-pooling, then
   ReLU, forward and backward, for a network's first layer. Second (at the end): 2x2 max-pooling,
   ReLU and flattening, for a network's last feature map.

   Done one image at a time, so the full-size feature map (3.2 MB for cnn-small at batch 64)
   is never written out, pooled, zero-filled and read back: only the pooled output, and which
   of the four pixels each pooled value came from, leave the kernel. Channels go in blocks of
   8 (GCC/Clang vector extensions: AVX2 when compiled for it, SSE or NEON otherwise).

   Layouts: x is N x H x W; weights are K*K x C (tap-major); the output, its gradient and the
   codes are N x Ho x Wo x C (channels last). A code is the pooled value's position in its 2x2
   window (0..3, row-major), or 4 where ReLU passed no gradient. Threads: OpenMP, which inside
   torch's process is torch's own runtime, so the kernel and torch share one pool of threads. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t m8 __attribute__((vector_size(32)));
typedef uint8_t u8x8 __attribute__((vector_size(8)));

#define MAX_BLOCKS 8   /* C <= 64 */
#define MAX_SIDE 40    /* H + 2P and W + 2P */
#define MAX_K 7

int conv_pool_limits(int *max_channels, int *max_side, int *max_kernel) {
    *max_channels = 8 * MAX_BLOCKS;
    *max_side = MAX_SIDE;
    *max_kernel = MAX_K;
    return 1;
}

static inline v8 load8(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }
static inline v8 pick(m8 mask, v8 a, v8 b) { return (v8)(((m8)a & mask) | ((m8)b & ~mask)); }
static inline v8 splat(float f) { return (v8){f, f, f, f, f, f, f, f}; }

static void pad_image(const float *x, int H, int W, int P, float *xp) {
    const int Wp = W + 2 * P;
    memset(xp, 0, sizeof(float) * (H + 2 * P) * Wp);
    for (int i = 0; i < H; i++) memcpy(xp + (i + P) * Wp + P, x + i * W, sizeof(float) * W);
}

/* Inlined with constant C and K for cnn-small's 16 channels and 3x3, cnn-sprint's 8 and 5x5
   and cnn-classic's 10 (computed as 16) and 5x5: the compiler then keeps the accumulators in
   registers (the generic call, which serves any other allowed shape, made cnn-classic's step
   no faster than torch's ops: 0.98x against 1.19x). */
static inline __attribute__((always_inline)) void forward_image(
        const float *xp, const float *wt, const float *b, float *y, uint8_t *code,
        int Wp, int Ho, int Wo, const int C, const int K) {
    const int CB = C / 8;
    for (int py = 0; py < Ho; py++)
        for (int px = 0; px < Wo; px++) {
            const float *x0 = xp + 2 * py * Wp + 2 * px;
            v8 a[4][MAX_BLOCKS];
            for (int cb = 0; cb < CB; cb++) {
                const v8 bias = load8(b + cb * 8);
                a[0][cb] = a[1][cb] = a[2][cb] = a[3][cb] = bias;
            }
            for (int ky = 0; ky < K; ky++)
                for (int kx = 0; kx < K; kx++) {
                    const float *xr = x0 + ky * Wp + kx;
                    const float x00 = xr[0], x01 = xr[1], x10 = xr[Wp], x11 = xr[Wp + 1];
                    for (int cb = 0; cb < CB; cb++) {
                        const v8 w = load8(wt + (ky * K + kx) * C + cb * 8);
                        a[0][cb] += w * x00;
                        a[1][cb] += w * x01;
                        a[2][cb] += w * x10;
                        a[3][cb] += w * x11;
                    }
                }
            float *yo = y + (py * Wo + px) * C;
            uint8_t *co = code + (py * Wo + px) * C;
            for (int cb = 0; cb < CB; cb++) {
                /* as torch's max_pool2d: the first maximum in scan order, and NaN wins */
                v8 best = a[0][cb], at = splat(0);
                for (int s = 1; s < 4; s++) {
                    const v8 v = a[s][cb];
                    const m8 take = (v > best) | (v != v);
                    best = pick(take, v, best);
                    at = pick(take, splat((float)s), at);
                }
                /* as torch's relu: zero where the value is <= 0, and only there no gradient
                   (a NaN stays NaN and passes its gradient) */
                const m8 passes = (best > splat(0)) | (best != best);
                store8(yo + cb * 8, pick(passes, best, splat(0)));
                const v8 c = pick(passes, at, splat(4));
                for (int j = 0; j < 8; j++) co[cb * 8 + j] = (uint8_t)c[j];
            }
        }
}

void conv_pool_forward(const float *x, const float *wt, const float *b, float *y, uint8_t *code,
                       int N, int H, int W, int C, int K, int P, int threads) {
    const int Wp = W + 2 * P, Ho = (H + 2 * P - K + 1) / 2, Wo = (Wp - K + 1) / 2;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int n = 0; n < N; n++) {
        float xp[MAX_SIDE * MAX_SIDE];
        pad_image(x + (size_t)n * H * W, H, W, P, xp);
        float *yn = y + (size_t)n * Ho * Wo * C;
        uint8_t *cn = code + (size_t)n * Ho * Wo * C;
        if (C == 16 && K == 3) forward_image(xp, wt, b, yn, cn, Wp, Ho, Wo, 16, 3);
        else if (C == 8 && K == 5) forward_image(xp, wt, b, yn, cn, Wp, Ho, Wo, 8, 5);
        else if (C == 16 && K == 5) forward_image(xp, wt, b, yn, cn, Wp, Ho, Wo, 16, 5);
        else forward_image(xp, wt, b, yn, cn, Wp, Ho, Wo, C, K);
    }
}

/* One image's gradient at full size (zero off the pooled pixels): every entry written once. */
static void unpool_image(const float *gy, const uint8_t *code, float *G, int Ho, int Wo, int C) {
    const int Wc = 2 * Wo;
    for (int py = 0; py < Ho; py++)
        for (int px = 0; px < Wo; px++)
            for (int cb = 0; cb < C / 8; cb++) {
                const size_t o = (size_t)(py * Wo + px) * C + cb * 8;
                const v8 g = load8(gy + o);
                u8x8 raw;
                memcpy(&raw, code + o, sizeof raw);
                const m8 at = __builtin_convertvector(raw, m8);
                for (int s = 0; s < 4; s++) {
                    const m8 here = at == (m8){s, s, s, s, s, s, s, s};
                    store8(G + ((2 * py + (s >> 1)) * Wc + 2 * px + (s & 1)) * C + cb * 8, pick(here, g, splat(0)));
                }
            }
}

static inline __attribute__((always_inline)) void backward_image(
        const float *xp, const float *G, float *acc, int Wp, int Hc, int Wc, const int C, const int K) {
    const int CB = C / 8, KK = K * K;
    v8 sb[MAX_BLOCKS];
    for (int cb = 0; cb < CB; cb++) sb[cb] = splat(0);
    for (int ky = 0; ky < K; ky++) {
        v8 s[MAX_K][MAX_BLOCKS];
        for (int kx = 0; kx < K; kx++)
            for (int cb = 0; cb < CB; cb++) s[kx][cb] = splat(0);
        for (int oy = 0; oy < Hc; oy++) {
            const float *xr = xp + (oy + ky) * Wp;
            const float *gr = G + oy * Wc * C;
            for (int ox = 0; ox < Wc; ox++)
                for (int cb = 0; cb < CB; cb++) {
                    const v8 g = load8(gr + ox * C + cb * 8);
                    for (int kx = 0; kx < K; kx++) s[kx][cb] += g * xr[ox + kx];
                    if (ky == 0) sb[cb] += g;
                }
        }
        for (int kx = 0; kx < K; kx++)
            for (int cb = 0; cb < CB; cb++) {
                float *a = acc + (ky * K + kx) * C + cb * 8;
                store8(a, load8(a) + s[kx][cb]);
            }
    }
    for (int cb = 0; cb < CB; cb++) store8(acc + KK * C + cb * 8, load8(acc + KK * C + cb * 8) + sb[cb]);
}

/* The weights' and bias's gradients (K*K x C and C), summed per thread, then over the threads
   in thread order: the same result for the same thread count. Returns 0 if out of memory. */
int conv_pool_backward(const float *x, const float *gy, const uint8_t *code, float *gw, float *gb,
                       int N, int H, int W, int C, int K, int P, int threads) {
    const int Wp = W + 2 * P, Ho = (H + 2 * P - K + 1) / 2, Wo = (Wp - K + 1) / 2;
    const int Hc = 2 * Ho, Wc = 2 * Wo, KK = K * K, T = threads < 1 ? 1 : threads;
    float *partial = calloc((size_t)T * (KK + 1) * C, sizeof(float));
    float *maps = malloc(sizeof(float) * (size_t)T * Hc * Wc * C);
    if (!partial || !maps) {
        free(partial);
        free(maps);
        return 0;
    }
    int used = 1;
    #pragma omp parallel num_threads(T)
    {
        const int t = omp_get_thread_num();
        if (t == 0) used = omp_get_num_threads();
        float *acc = partial + (size_t)t * (KK + 1) * C;
        float *G = maps + (size_t)t * Hc * Wc * C;
        float xp[MAX_SIDE * MAX_SIDE];
        #pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            pad_image(x + (size_t)n * H * W, H, W, P, xp);
            unpool_image(gy + (size_t)n * Ho * Wo * C, code + (size_t)n * Ho * Wo * C, G, Ho, Wo, C);
            if (C == 16 && K == 3) backward_image(xp, G, acc, Wp, Hc, Wc, 16, 3);
            else if (C == 8 && K == 5) backward_image(xp, G, acc, Wp, Hc, Wc, 8, 5);
            else if (C == 16 && K == 5) backward_image(xp, G, acc, Wp, Hc, Wc, 16, 5);
            else backward_image(xp, G, acc, Wp, Hc, Wc, C, K);
        }
    }
    memset(gw, 0, sizeof(float) * KK * C);
    memset(gb, 0, sizeof(float) * C);
    for (int t = 0; t < used; t++) {
        const float *p = partial + (size_t)t * (KK + 1) * C;
        for (int j = 0; j < KK * C; j++) gw[j] += p[j];
        for (int c = 0; c < C; c++) gb[c] += p[KK * C + c];
    }
    free(partial);
    free(maps);
    return 1;
}

/* 2x2 max-pooling, then ReLU, then flattening, of a channels-last N x H x W x C feature map
   (C a multiple of 8): the output is N x (C * Ho * Wo) in torch's flatten order (channel, row,
   column), ready for a Linear layer. Replaces three ops and two layout changes: pooling's
   output, ReLU's, the flatten's copy out of channels-last, and in the backward a zero-filled
   full-size gradient, a scatter into it and a ReLU backward across two layouts. Codes as
   conv_pool_forward's. */
void pool_relu_flatten_forward(const float *x, float *y, uint8_t *code, int N, int H, int W, int C,
                               int threads) {
    const int Ho = H / 2, Wo = W / 2, CB = C / 8, plane = Ho * Wo;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * H * W * C;
        float *yn = y + (size_t)n * C * plane;
        uint8_t *cn = code + (size_t)n * plane * C;
        for (int py = 0; py < Ho; py++)
            for (int px = 0; px < Wo; px++) {
                const float *x0 = xn + ((size_t)(2 * py) * W + 2 * px) * C;
                const int p = py * Wo + px;
                for (int cb = 0; cb < CB; cb++) {
                    const v8 cand[4] = {load8(x0 + cb * 8), load8(x0 + C + cb * 8),
                                        load8(x0 + (size_t)W * C + cb * 8), load8(x0 + (size_t)W * C + C + cb * 8)};
                    v8 best = cand[0], at = splat(0);
                    for (int s = 1; s < 4; s++) {
                        const m8 take = (cand[s] > best) | (cand[s] != cand[s]);
                        best = pick(take, cand[s], best);
                        at = pick(take, splat((float)s), at);
                    }
                    const m8 passes = (best > splat(0)) | (best != best);
                    const v8 out = pick(passes, best, splat(0));
                    const v8 c = pick(passes, at, splat(4));
                    for (int j = 0; j < 8; j++) {
                        yn[(size_t)(cb * 8 + j) * plane + p] = out[j];
                        cn[(size_t)p * C + cb * 8 + j] = (uint8_t)c[j];
                    }
                }
            }
    }
}

/* The input's gradient, channels-last N x H x W x C, every element written once (a row or
   column the pooling dropped, as for an odd side, gets zeros). */
void pool_relu_flatten_backward(const float *gy, const uint8_t *code, float *gx, int N, int H, int W, int C,
                                int threads) {
    const int Ho = H / 2, Wo = W / 2, CB = C / 8, plane = Ho * Wo;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *gn = gy + (size_t)n * C * plane;
        const uint8_t *cn = code + (size_t)n * plane * C;
        float *xn = gx + (size_t)n * H * W * C;
        for (int py = 0; py < Ho; py++)
            for (int px = 0; px < Wo; px++) {
                float *x0 = xn + ((size_t)(2 * py) * W + 2 * px) * C;
                const int p = py * Wo + px;
                for (int cb = 0; cb < CB; cb++) {
                    v8 g;
                    for (int j = 0; j < 8; j++) g[j] = gn[(size_t)(cb * 8 + j) * plane + p];
                    u8x8 raw;
                    memcpy(&raw, cn + (size_t)p * C + cb * 8, sizeof raw);
                    const m8 at = __builtin_convertvector(raw, m8);
                    store8(x0 + cb * 8, pick(at == (m8){0, 0, 0, 0, 0, 0, 0, 0}, g, splat(0)));
                    store8(x0 + C + cb * 8, pick(at == (m8){1, 1, 1, 1, 1, 1, 1, 1}, g, splat(0)));
                    store8(x0 + (size_t)W * C + cb * 8, pick(at == (m8){2, 2, 2, 2, 2, 2, 2, 2}, g, splat(0)));
                    store8(x0 + (size_t)W * C + C + cb * 8, pick(at == (m8){3, 3, 3, 3, 3, 3, 3, 3}, g, splat(0)));
                }
            }
        if (H % 2) memset(xn + (size_t)(H - 1) * W * C, 0, sizeof(float) * W * C);
        if (W % 2)
            for (int row = 0; row < 2 * Ho; row++) memset(xn + ((size_t)row * W + W - 1) * C, 0, sizeof(float) * C);
    }
}
