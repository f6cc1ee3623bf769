/* The machine's int8 peak: AVX-512 VNNI multiply-adds (VPDPBUSD) and nothing else, on N threads.

       gcc -O2 -mavx512f -mavx512bw -mavx512vnni -fopenmp benchmarks/int8_peak.c -o /tmp/int8_peak
       /tmp/int8_peak 2

   Twelve independent accumulators per thread (more than the instruction's latency times its throughput), each
   with operands of its own so the compiler cannot merge them; 64 multiply-adds (128 operations) per
   instruction; the best of five rounds. benchmarks/int8_rows.py's GEMM rates are read against it
   (benchmarks/README.md). Needs a CPU with AVX-512 VNNI. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#define CHAINS 12
#define ROUNDS 5
#define INSTRUCTIONS_PER_THREAD 200000000L

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
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
    printf("%.3f TOPS on %d thread(s)\n", best / 1e12, threads);
    return 0;
}
