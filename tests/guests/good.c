/* good: a well-behaved guest that runs next to a hostile one.
 *
 *   good [STATUS [TICKS]]   print "good: start", then TICKS times (default 4)
 *                           wait 50 ms and print "good: tick I", then print
 *                           "good: done STATUS" and exit with STATUS (default 0).
 */
#include <paravm.h>

int main(int argc, char **argv)
{
    int status = argc > 1 ? (int)strtol(argv[1], 0, 0) : 0;
    int ticks = argc > 2 ? (int)strtol(argv[2], 0, 0) : 4;
    printf("good: start\n");
    for (int i = 1; i <= ticks; i++) {
        uint64_t t0 = pv_clock_ns();
        /* pv_wait may return early (another vector); wait the full 50 ms. */
        for (;;) {
            uint64_t spent = pv_clock_ns() - t0;
            if (spent >= 50000000ull)
                break;
            pv_wait(50000000ull - spent);
        }
        printf("good: tick %d\n", i);
    }
    printf("good: done %d\n", status);
    return status;
}
