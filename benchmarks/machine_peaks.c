/* The machine's two ceilings for int8 inference on N threads: its int8 peak (AVX-512 VNNI multiply-adds,
   VPDPBUSD, and nothing else) and its memory read bandwidth (a buffer far larger than the caches, read once
   per round with 512-bit loads).

       gcc -O2 -mavx512f -mavx512bw -mavx512vnni -fopenmp benchmarks/machine_peaks.c -o /tmp/machine_peaks
       /tmp/machine_peaks 2

   On a CPU with AMX-INT8, add -mamx-tile -mamx-int8 to also time AMX's int8 peak (TDPBUSD), which is what
   onnxruntime's and OpenVINO's int8 GEMMs use there.

   Peak: twelve independent accumulators per thread (more than the instruction's latency times its
   throughput), each with operands of its own so the compiler cannot merge them; 64 multiply-adds (128
   operations) per instruction. Bandwidth: each thread sums its own contiguous share of 1 GiB, the pages
   touched first by the thread that reads them. Both the best of five rounds. benchmarks/int8_rows.py's GEMM
   rates and OpenVINO's FullyConnected times are read against them (benchmarks/README.md): at batch 1 a text
   of 16 tokens reads every int8 weight for 16 rows of work, so the text tower is bounded by both. Needs a CPU
   with AVX-512 VNNI. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#define CHAINS 12
#define ROUNDS 5
#define INSTRUCTIONS_PER_THREAD 200000000L
#define BANDWIDTH_BYTES (1L << 30)

static double int8_peak(int threads) {
    long iterations = INSTRUCTIONS_PER_THREAD / CHAINS;
    double best = 0;
    for (int round = 0; round < ROUNDS; round++) {
        double start = omp_get_wtime();
        long sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
            __m512i a = _mm512_set1_epi8(1), b[CHAINS], c[CHAINS];
            for (int k = 0; k < CHAINS; k++) {
                b[k] = _mm512_set1_epi8((char)(k + 2));
                c[k] = _mm512_setzero_si512();
            }
            for (long i = 0; i < iterations; i++) {
#pragma GCC unroll 12 /* CHAINS: the accumulators stay in registers */
                for (int k = 0; k < CHAINS; k++) c[k] = _mm512_dpbusd_epi32(c[k], a, b[k]);
                __asm__ volatile("" : "+v"(a)); /* a is unknown to the compiler each round */
            }
            __m512i sum = _mm512_setzero_si512();
            for (int k = 0; k < CHAINS; k++) sum = _mm512_add_epi32(sum, c[k]);
            sink += _mm512_reduce_add_epi32(sum);
        }
        double seconds = omp_get_wtime() - start;
        double operations = 2.0 * 64 * CHAINS * (double)iterations * threads;
        if (operations / seconds > best) best = operations / seconds;
        if (sink == 42) printf(" "); /* keeps the result alive */
    }
    return best;
}

#ifdef __AMX_INT8__
/* AMX's int8 peak: TDPBUSD on four independent 16x16 int32 accumulator tiles (16 x 16 x 64 multiply-adds each),
   fed by four 16x64-byte operand tiles loaded once. Linux hands out AMX's tile state only on request. */
#include <sys/syscall.h>
#include <unistd.h>
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define AMX_INSTRUCTIONS_PER_THREAD 20000000L

struct tile_config {
    unsigned char palette, start_row, reserved[14];
    unsigned short bytes_per_row[16];
    unsigned char rows[16];
};

static double amx_int8_peak(int threads) {
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return 0;
    long iterations = AMX_INSTRUCTIONS_PER_THREAD / 4;
    double best = 0;
    for (int round = 0; round < ROUNDS; round++) {
        double start = omp_get_wtime();
        long sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
            struct tile_config config = {0};
            config.palette = 1;
            for (int t = 0; t < 8; t++) {
                config.rows[t] = 16;
                config.bytes_per_row[t] = 64;
            }
            _tile_loadconfig(&config);
            _Alignas(64) signed char a[16 * 64], b[16 * 64];
            _Alignas(64) int c[16 * 16];
            for (int i = 0; i < 16 * 64; i++) a[i] = (signed char)(i % 7 + 1), b[i] = (signed char)(i % 5 + 1);
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            _tile_loadd(4, a, 64);
            _tile_loadd(5, b, 64);
            _tile_loadd(6, b, 64);
            _tile_loadd(7, a, 64);
            for (long i = 0; i < iterations; i++) {
                _tile_dpbusd(0, 4, 5);
                _tile_dpbusd(1, 4, 7);
                _tile_dpbusd(2, 6, 5);
                _tile_dpbusd(3, 6, 7);
            }
            _tile_stored(0, c, 64);
            sink += c[0];
            _tile_stored(3, c, 64);
            sink += c[255];
            _tile_release();
        }
        double seconds = omp_get_wtime() - start;
        double operations = 2.0 * 16 * 16 * 64 * 4 * (double)iterations * threads;
        if (operations / seconds > best) best = operations / seconds;
        if (sink == 42) printf(" "); /* keeps the result alive */
    }
    return best;
}
#endif

static double read_bandwidth(int threads) {
    long words = BANDWIDTH_BYTES / sizeof(__m512i);
    __m512i *buffer = aligned_alloc(64, BANDWIDTH_BYTES);
    if (!buffer) return 0;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long i = 0; i < words; i++) buffer[i] = _mm512_set1_epi32((int)i);
    double best = 0;
    for (int round = 0; round < ROUNDS; round++) {
        double start = omp_get_wtime();
        long sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
            /* four sums so the adds do not wait on each other; the loads are the work */
            __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
#pragma omp for schedule(static)
            for (long i = 0; i < words; i += 4) {
                s0 = _mm512_add_epi32(s0, _mm512_load_si512(buffer + i));
                s1 = _mm512_add_epi32(s1, _mm512_load_si512(buffer + i + 1));
                s2 = _mm512_add_epi32(s2, _mm512_load_si512(buffer + i + 2));
                s3 = _mm512_add_epi32(s3, _mm512_load_si512(buffer + i + 3));
            }
            sink += _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(s0, s1), _mm512_add_epi32(s2, s3)));
        }
        double seconds = omp_get_wtime() - start;
        if (BANDWIDTH_BYTES / seconds > best) best = BANDWIDTH_BYTES / seconds;
        if (sink == 42) printf(" "); /* keeps the result alive */
    }
    free(buffer);
    return best;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    printf("%.3f TOPS int8 on %d thread(s)\n", int8_peak(threads) / 1e12, threads);
#ifdef __AMX_INT8__
    double amx = amx_int8_peak(threads);
    if (amx > 0) printf("%.3f TOPS int8 with AMX on %d thread(s)\n", amx / 1e12, threads);
    else printf("AMX: the kernel did not grant its tile state (arch_prctl)\n");
#endif
    printf("%.1f GB/s memory read on %d thread(s)\n", read_bandwidth(threads) / 1e9, threads);
    return 0;
}
